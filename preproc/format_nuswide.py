"""Format the official NUS-WIDE release into the SPML layout (the variant of the EM and VLPL papers).

Two variants exist and give different numbers (see `dataset_provenance.py`):
- "cole-recrawl": Cole et al.'s 2020 re-crawl, 150,000 train / 60,260 test
  images, distributed only as pre-formatted `formatted_{train,val}_{images,labels}.npy`
  files. `--pre-formatted DIR` checks them and installs them into `--save-path`
  unchanged, with `classes.txt` and `variant.json` (named from their counts).
- "official": built here from the official release's own files in `<load-path>`:

    Concepts81.txt (or ConceptsList/Concepts81.txt)      the 81 concepts, column order
    ImageList/{Train,Test}Imagelist.txt                  161,789 / 107,859 images
    Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt   one 0/1 per image line

Rules: rows in image-list order; image paths are the list entries with Windows
separators turned into "/" and anything up to a "Flickr" folder dropped
(`C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg` -> `actor/0001_2124494179.jpg`),
relative to `Flickr/` (where Flickr.zip unpacks); labels float64. Images with no
positive are kept (as in the release) unless `--drop-unlabelled` is given,
which yields the variant "official-labelled". `variant.json` records the choice.

    python -m preproc.format_nuswide [--load-path data/nuswide --save-path data/nuswide] [--drop-unlabelled]
    python -m preproc.format_nuswide --pre-formatted ~/Downloads/nuswide_cole
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import logging
import sys
from pathlib import Path

import numpy as np

from class_names import NUSWIDE_CLASSES
from dataset_provenance import dataset_variant
from errors import UserError
from fileio import load_npy
from preproc.format_io import (
    FormattedSplit,
    format_parser,
    read_lines,
    run_script,
    write_formatted,
)

log = logging.getLogger(__name__)

DOWNLOAD_STEP = ("download the official NUS-WIDE ImageList, Groundtruth and ConceptsList archives and unzip them "
                 "there, or use Cole et al.'s pre-formatted files instead (see data/nuswide/README.md)")
SPLIT_FILES = {"train": "Train", "val": "Test"}  # official Test is our test set (formatted "val")


def image_path(entry: str) -> str:
    """An image-list entry as a path relative to the Flickr folder."""
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p]
    if "Flickr" in parts:
        parts = parts[len(parts) - parts[::-1].index("Flickr"):]
    return "/".join(parts)


def _concepts(load_path: Path) -> list[str]:
    candidates = [load_path / "Concepts81.txt", load_path / "ConceptsList" / "Concepts81.txt"]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    names = read_lines(path, DOWNLOAD_STEP)
    if len(names) != len(set(names)):
        raise UserError(f"{path} lists a concept twice; re-extract ConceptsList")
    if names != list(NUSWIDE_CLASSES):
        log.warning(f"warning: {path} differs from the 81 official concepts; using its order for the columns")
    return names


def read_nuswide_split(load_path: Path, split: str, concepts: list[str]) -> FormattedSplit:
    tag = SPLIT_FILES[split]
    list_path = load_path / "ImageList" / f"{tag}Imagelist.txt"
    images = [image_path(line) for line in read_lines(list_path, DOWNLOAD_STEP)]
    labels = np.zeros((len(images), len(concepts)), dtype=np.float64)
    for column, concept in enumerate(concepts):
        path = load_path / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{tag}.txt"
        values = read_lines(path, DOWNLOAD_STEP)
        if len(values) != len(images) or not set(values) <= {"0", "1"}:
            raise UserError(f"{path} must hold one 0/1 per line of {list_path} ({len(images)} lines), "
                            f"found {len(values)} lines with values {sorted(set(values))[:4]}")
        labels[:, column] = np.array(values, dtype=np.float64)
    return FormattedSplit(images, labels)


def format_nuswide(load_path: Path, save_path: Path, drop_unlabelled: bool = False) -> list[Path]:
    load_path = Path(load_path)
    if not load_path.is_dir():
        raise UserError(f"missing folder {load_path}: {DOWNLOAD_STEP}")
    concepts = _concepts(load_path)
    splits = {split: read_nuswide_split(load_path, split, concepts) for split in SPLIT_FILES}
    dropped = {split: int((data.labels.sum(1) == 0).sum()) for split, data in splits.items()}
    if drop_unlabelled:
        splits = {split: FormattedSplit([im for im, keep in zip(d.images, d.labels.sum(1) > 0) if keep],
                                        d.labels[d.labels.sum(1) > 0]) for split, d in splits.items()}
    else:
        log.info(f"keeping {dropped['train']:,} train / {dropped['val']:,} test images with no positive "
                 f"(--drop-unlabelled removes them)")
    variant = "official-labelled" if drop_unlabelled else "official"
    return write_formatted("nuswide", save_path, splits, concepts, variant,
                           source="official NUS-WIDE release", unlabelled_images=dropped,
                           drop_unlabelled=drop_unlabelled)


def install_pre_formatted(source: Path, save_path: Path) -> list[Path]:
    """Validate pre-formatted files (e.g. Cole et al.'s re-crawl) and copy them in, rows unchanged."""
    fix = f"put the four formatted_{{train,val}}_{{images,labels}}.npy files of the download in {source}"
    splits = {}
    for split in SPLIT_FILES:
        images = load_npy(Path(source) / f"formatted_{split}_images.npy", fix)
        labels = load_npy(Path(source) / f"formatted_{split}_labels.npy", fix)
        if images.ndim != 1 or images.dtype.kind not in "US":
            raise UserError(f"{source}/formatted_{split}_images.npy must be a 1-D array of path strings")
        if labels.shape != (len(images), len(NUSWIDE_CLASSES)) or not np.isin(labels, (0, 1)).all():
            raise UserError(f"{source}/formatted_{split}_labels.npy must be a ({len(images)}, 81) matrix of 0/1, "
                            f"got {labels.dtype} {labels.shape}")
        splits[split] = FormattedSplit(images.tolist(), labels)
    variant = dataset_variant("nuswide", Path(source), len(splits["train"].images), len(splits["val"].images))
    return write_formatted("nuswide", save_path, splits, list(NUSWIDE_CLASSES), variant,
                           source=f"pre-formatted files from {Path(source).resolve()}")


def main(argv: list[str] | None = None) -> int:
    parser = format_parser(__doc__, "nuswide")
    parser.add_argument("--drop-unlabelled", action="store_true",
                        help="drop images with no positive label (variant 'official-labelled')")
    parser.add_argument("--pre-formatted", type=Path, metavar="DIR",
                        help="install pre-formatted files (Cole et al.'s re-crawl) from DIR instead of formatting")
    args = parser.parse_args(argv)
    if args.pre_formatted:
        return run_script(lambda: install_pre_formatted(args.pre_formatted, args.save_path))
    return run_script(lambda: format_nuswide(args.load_path, args.save_path, args.drop_unlabelled))


if __name__ == "__main__":
    sys.exit(main())
