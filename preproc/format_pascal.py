"""Format PASCAL VOC 2012 into the SPML layout (reference rules of Cole et al. 2021).

Source: `<load-path>/VOCdevkit/VOC2012/ImageSets/Main/<class>_{train,val}.txt`,
one line `<image id> <flag>` per image and class, with flag 1 (present),
0 ("difficult": present only as difficult instances) or -1 (absent).

Rules, as the reference script:
- label 1 only for flag 1; flags 0 and -1 both give 0;
- an image is kept only if it has at least one positive (all 5,717 train and
  5,823 val images do);
- rows sorted by file name; image paths `<image id>.jpg`, relative to
  `VOCdevkit/VOC2012/JPEGImages`; columns in the 20 classes' alphabetical order;
- labels float64; the official `val` split is the test set.

    python -m preproc.format_pascal [--load-path data/pascal --save-path data/pascal]
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import logging
import sys
from pathlib import Path

import numpy as np

from class_names import PASCAL_CLASSES
from errors import UserError
from preproc.format_io import (
    FormattedSplit,
    format_parser,
    read_lines,
    run_script,
    write_formatted,
)

log = logging.getLogger(__name__)

DOWNLOAD_STEP = "download VOCtrainval_11-May-2012.tar and extract it there (see data/pascal/README.md)"
FLAGS = {"1": 1.0, "0": 0.0, "-1": 0.0}


def read_voc_split(main_dir: Path, split: str) -> FormattedSplit:
    """One official split from the per-class image-set files."""
    positives: dict[str, list[int]] = {}
    for column, name in enumerate(PASCAL_CLASSES):
        path = main_dir / f"{name}_{split}.txt"
        for line_no, line in enumerate(read_lines(path, DOWNLOAD_STEP), start=1):
            fields = line.split()  # positives are written with two spaces in the devkit
            if len(fields) != 2 or fields[1] not in FLAGS:
                raise UserError(f"{path}:{line_no}: expected '<image id> <1|0|-1>', got {line!r}")
            if FLAGS[fields[1]] == 1.0:
                positives.setdefault(f"{fields[0]}.jpg", []).append(column)
    images = sorted(positives)
    labels = np.zeros((len(images), len(PASCAL_CLASSES)), dtype=np.float64)
    for row, image in enumerate(images):
        labels[row, positives[image]] = 1.0
    return FormattedSplit(images, labels)


def format_pascal(load_path: Path, save_path: Path) -> list[Path]:
    main_dir = Path(load_path) / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    if not main_dir.is_dir():
        raise UserError(f"missing folder {main_dir}: {DOWNLOAD_STEP}")
    splits = {split: read_voc_split(main_dir, split) for split in ("train", "val")}
    overlap = set(splits["train"].images) & set(splits["val"].images)
    if overlap:
        raise UserError(f"{len(overlap)} images are in both the train and val image sets "
                        f"(first: {sorted(overlap)[0]}); re-extract the VOC2012 devkit")
    return write_formatted("pascal", save_path, splits, list(PASCAL_CLASSES), "voc2012")


def main(argv: list[str] | None = None) -> int:
    args = format_parser(__doc__, "pascal").parse_args(argv)
    return run_script(lambda: format_pascal(args.load_path, args.save_path))


if __name__ == "__main__":
    sys.exit(main())
