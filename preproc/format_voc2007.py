"""Format PASCAL VOC 2007 into the SPML layout (the rules of PU-MLC: Yuan, Zhang, Huang, ICME 2024).

Source: `<load-path>/VOCdevkit/VOC2007/`, where both tars unpack:

    ImageSets/Main/trainval.txt   5,011 image ids (VOCtrainval_06-Nov-2007.tar): the official train split
    ImageSets/Main/test.txt       4,952 image ids (VOCtest_06-Nov-2007.tar): the test set (formatted "val")
    Annotations/<id>.xml          the objects of each image (both tars)

Rules, as the authors' `datasets/voc2007.py`:
- rows in image-set file order, every listed image kept (an image whose objects are
  all difficult has no positive);
- a class is positive iff the image holds an object of that class not marked
  `<difficult>1</difficult>`. Difficult objects are skipped, so a class present only
  as difficult objects is a negative (0) in train *and in the test labels*. The
  official VOC protocol ignores such labels when scoring instead; test mAPs here
  follow the authors, and `variant.json` records the rule;
- object names are lower-cased as the authors do; an object without a `difficult`
  tag is not difficult;
- columns: the 20 classes in alphabetical order (aeroplane ... tvmonitor);
- image paths `<id>.jpg`, relative to `VOCdevkit/VOC2007/JPEGImages`; labels float64.

    python -m preproc.format_voc2007 [--load-path data/voc2007 --save-path data/voc2007]
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from class_names import PASCAL_CLASSES
from errors import UserError
from preproc.format_io import (
    FormattedSplit,
    format_parser,
    read_lines,
    require,
    run_script,
    write_formatted,
)

TARS = {"train": "VOCtrainval_06-Nov-2007.tar", "val": "VOCtest_06-Nov-2007.tar"}
IMAGE_SETS = {"train": "trainval", "val": "test"}  # official test is our test set (formatted "val")
VARIANT = "voc2007"


def _download_step(split: str) -> str:
    if split == "val":
        return (f"the test images and annotations come in a separate tar, {TARS['val']}; extract it in the same "
                f"folder as {TARS['train']} (it unpacks into VOCdevkit/VOC2007; see data/voc2007/README.md)")
    return f"download {TARS['train']} and extract it there (see data/voc2007/README.md)"


def read_annotation(path: Path, split: str) -> list[int]:
    """Columns of the classes with at least one non-difficult object in one annotation file."""
    try:
        root = ET.parse(require(path, _download_step(split))).getroot()
    except ET.ParseError as err:
        raise UserError(f"{path} is not valid XML ({err}); re-extract {TARS[split]}") from None
    except OSError as err:  # a folder or an unreadable file in its place
        raise UserError(f"cannot read {path} ({err.strerror}); re-extract {TARS[split]}") from None
    columns = set()
    for obj in root.findall("object"):
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise UserError(f"{path}: <difficult> must be 0 or 1, got {difficult!r}; re-extract {TARS[split]}")
        name = (obj.findtext("name") or "").strip().lower()
        if not name:
            raise UserError(f"{path}: an <object> without a <name>; re-extract {TARS[split]}")
        if name not in PASCAL_CLASSES:
            raise UserError(f"{path}: unknown class {name!r}; the VOC 2007 classes are {', '.join(PASCAL_CLASSES)}")
        if difficult == "0":
            columns.add(PASCAL_CLASSES.index(name))
    return sorted(columns)


def read_voc2007_split(voc_dir: Path, split: str) -> FormattedSplit:
    """One official split: the ids of its image-set file, in file order, and their labels."""
    list_path = voc_dir / "ImageSets" / "Main" / f"{IMAGE_SETS[split]}.txt"
    ids = read_lines(list_path, _download_step(split))
    labels = np.zeros((len(ids), len(PASCAL_CLASSES)), dtype=np.float64)
    for row, image_id in enumerate(ids):
        # an id names a file in Annotations/ and JPEGImages/: no separators, so it cannot point elsewhere
        if len(image_id.split()) != 1 or "/" in image_id or "\\" in image_id:
            raise UserError(f"{list_path}:{row + 1}: expected one image id per line, got {image_id!r}")
        labels[row, read_annotation(voc_dir / "Annotations" / f"{image_id}.xml", split)] = 1.0
    return FormattedSplit([f"{image_id}.jpg" for image_id in ids], labels)


def format_voc2007(load_path: Path, save_path: Path) -> list[Path]:
    voc_dir = Path(load_path) / "VOCdevkit" / "VOC2007"
    if not voc_dir.is_dir():
        raise UserError(f"missing folder {voc_dir}: download {TARS['train']} and {TARS['val']} and extract both "
                        f"there (see data/voc2007/README.md)")
    splits = {split: read_voc2007_split(voc_dir, split) for split in IMAGE_SETS}
    overlap = set(splits["train"].images) & set(splits["val"].images)
    if overlap:
        raise UserError(f"{len(overlap)} images are in both trainval.txt and test.txt "
                        f"(first: {sorted(overlap)[0]}); re-extract both VOC 2007 tars")
    return write_formatted("voc2007", save_path, splits, list(PASCAL_CLASSES), VARIANT,
                           source="VOC 2007 trainval + test XML annotations",
                           difficult="negative (PU-MLC; the official VOC protocol ignores difficult objects)")


def main(argv: list[str] | None = None) -> int:
    args = format_parser(__doc__, "voc2007").parse_args(argv)
    return run_script(lambda: format_voc2007(args.load_path, args.save_path))


if __name__ == "__main__":
    sys.exit(main())
