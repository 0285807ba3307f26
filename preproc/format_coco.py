"""Format MS-COCO 2014 into the SPML layout (reference rules of Cole et al. 2021).

Source: `<load-path>/annotations/instances_{train,val}2014.json`.

Rules, as the reference script:
- an image is kept only if it has at least one annotation (82,081 train and
  40,137 val images), crowd annotations included;
- rows ordered by image id sorted *as strings* ("100" < "9"), kept for
  compatibility with published splits;
- columns are the `categories` in file order (80, ids 1..90 with gaps), which
  must be identical in both files;
- image paths `{split}2014/COCO_{split}2014_<id, 12 digits>.jpg`, relative to the
  COCO folder; labels float64; the official `val2014` split is the test set.

    python -m preproc.format_coco [--load-path data/coco --save-path data/coco]

`--every-image`: PU-MLC's COCO (Yuan, Zhang, Huang, ICME 2024), variant
"coco2014-every-image": every image of each file's `images` list, 82,783 train and
40,504 val, the ones without annotations as all-zero rows. Rows follow the
`images` list (first occurrence of an id), the order of pycocotools'
`COCO(ann_file).imgs.keys()` that the authors' `datasets/coco2014.py` iterates, so
that PU-MLC's known-label mask (`--known-ratio`, drawn row-major in dataset order)
keeps the same entries as theirs. Columns and image paths as above. The formatted
files go to their own folder, and runs name the COCO folder as the image root:

    python -m preproc.format_coco --every-image   # into data/coco_every
    python main.py -d coco --data-dir data/coco_every --image-root data/coco ...
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import json
import sys
from pathlib import Path

import numpy as np

from errors import UserError
from preproc.format_io import (
    FormattedSplit,
    format_parser,
    require,
    run_script,
    write_formatted,
)
from presets import DATA_ROOT

DOWNLOAD_STEP = "download annotations_trainval2014.zip and unzip it there (see data/coco/README.md)"


def _load_instances(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        with open(require(path, DOWNLOAD_STEP)) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-extract annotations_trainval2014.zip") from None
    for key in keys:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UserError(f"{path} has no '{key}' list; it must be an instances_*2014.json file "
                            f"(captions_ and person_keypoints_ files do not carry the 80 categories)")
    return data


def read_coco_split(path: Path, split: str, every_image: bool = False) -> tuple[list[str], FormattedSplit]:
    """(category names in file order, the split) from one instances file."""
    keys = ("annotations", "categories", "images") if every_image else ("annotations", "categories")
    data = _load_instances(path, keys)
    try:
        names = [str(c["name"]) for c in data["categories"]]
        column_of = {int(c["id"]): i for i, c in enumerate(data["categories"])}
        image_ids = np.array([int(a["image_id"]) for a in data["annotations"]], dtype=np.int64)
        columns = np.array([column_of[int(a["category_id"])] for a in data["annotations"]], dtype=np.int64)
        # dict.fromkeys keeps the first position of a repeated id, as pycocotools' `imgs` dict
        listed = list(dict.fromkeys(int(im["id"]) for im in data["images"])) if every_image else []
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed category, annotation or image entry ({err!r}); "
                        f"re-extract the file") from None
    if every_image:
        unlisted = set(image_ids.tolist()) - set(listed)
        if unlisted:
            raise UserError(f"{path}: {len(unlisted)} annotated image ids are missing from its 'images' list "
                            f"(first: {min(unlisted)}); re-extract annotations_trainval2014.zip")
        ordered = np.array(listed, dtype=np.int64)
    else:
        ordered = np.array(sorted({str(i) for i in image_ids.tolist()}), dtype=np.int64)
    row_of = {image_id: row for row, image_id in enumerate(ordered.tolist())}
    labels = np.zeros((len(ordered), len(names)), dtype=np.float64)
    labels[[row_of[i] for i in image_ids.tolist()], columns] = 1.0
    images = [f"{split}2014/COCO_{split}2014_{image_id:012d}.jpg" for image_id in ordered.tolist()]
    return names, FormattedSplit(images, labels)


def format_coco(load_path: Path, save_path: Path, every_image: bool = False) -> list[Path]:
    ann_dir = Path(load_path) / "annotations"
    names, splits = {}, {}
    for split in ("train", "val"):
        names[split], splits[split] = read_coco_split(ann_dir / f"instances_{split}2014.json", split, every_image)
    if names["train"] != names["val"]:
        raise UserError(f"the categories of instances_train2014.json and instances_val2014.json differ; "
                        f"re-extract annotations_trainval2014.zip into {ann_dir}")
    if not every_image:
        return write_formatted("coco", save_path, splits, names["train"], "coco2014")
    unlabelled = {split: int((data.labels.sum(1) == 0).sum()) for split, data in splits.items()}
    return write_formatted("coco", save_path, splits, names["train"], "coco2014-every-image",
                           source="every image of instances_{train,val}2014.json, in 'images' list order (PU-MLC)",
                           unlabelled_images=unlabelled,
                           image_root=f"the COCO folder {Path(load_path).resolve()} (pass it as --image-root)")


def main(argv: list[str] | None = None) -> int:
    parser = format_parser(__doc__, "coco")
    parser.add_argument("--every-image", action="store_true",
                        help="PU-MLC's COCO: every image, those without annotations as all-zero rows, in the "
                             "annotation file's image order (variant 'coco2014-every-image'), saved to "
                             "data/coco_every unless --save-path says otherwise")
    parser.set_defaults(save_path=None)
    args = parser.parse_args(argv)
    # never over Cole et al.'s files in data/coco: the every-image files get a folder of their own
    save_path = args.save_path or DATA_ROOT / ("coco_every" if args.every_image else "coco")
    return run_script(lambda: format_coco(args.load_path, save_path, args.every_image))


if __name__ == "__main__":
    sys.exit(main())
