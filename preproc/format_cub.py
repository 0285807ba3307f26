"""Format CUB-200-2011 attributes into the SPML layout (reference rules of Cole et al. 2021).

Source, as extracted from CUB_200_2011.tgz into `<load-path>`:

    attributes.txt                                  "<id> <name>", 312 attributes
    CUB_200_2011/images.txt                         "<image id> <path>", 11,788 images
    CUB_200_2011/train_test_split.txt               "<image id> <1 train | 0 test>"
    CUB_200_2011/attributes/image_attribute_labels.txt
        "<image id> <attribute id> <is_present> <certainty id> <time>", one line per image and attribute

Rules, as the reference script:
- rows in `images.txt` order, split by `train_test_split.txt` (5,994 train,
  5,794 test); image paths as listed, relative to `CUB_200_2011/images`;
- columns are the 312 attributes in id order; label = `is_present` (the
  certainty is ignored); labels int64. The reference reads the label file
  sequentially; here every (image, attribute) pair is looked up by id and must
  appear exactly once, which gives the same matrix for the official file.
- `attributes.txt` may also sit inside `CUB_200_2011/` (some mirrors).

    python -m preproc.format_cub [--load-path data/cub --save-path data/cub]
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import sys
from pathlib import Path

import numpy as np

from class_names import read_class_file
from errors import UserError
from preproc.format_io import (
    FormattedSplit,
    format_parser,
    read_lines,
    require,
    run_script,
    write_formatted,
)

DOWNLOAD_STEP = "download CUB_200_2011.tgz and extract it there (see data/cub/README.md)"
NUM_ATTRIBUTES = 312


def _id_table(path: Path, what: str) -> dict[int, str]:
    """"<id> <value>" lines as {id: value}, in file order."""
    table = {}
    for line_no, line in enumerate(read_lines(path, DOWNLOAD_STEP), start=1):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value.strip():
            raise UserError(f"{path}:{line_no}: expected '<id> <{what}>', got {line!r}")
        if int(key) in table:
            raise UserError(f"{path}:{line_no}: id {key} is listed twice")
        table[int(key)] = value.strip()
    return table


def _attribute_names(load_path: Path) -> list[str]:
    candidates = [load_path / "attributes.txt", load_path / "CUB_200_2011" / "attributes.txt"]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    names = read_class_file(require(path, DOWNLOAD_STEP))
    if len(names) != NUM_ATTRIBUTES:
        raise UserError(f"{path} lists {len(names)} attributes, expected {NUM_ATTRIBUTES}; re-extract CUB_200_2011.tgz")
    return names


def _attribute_labels(path: Path, row_of: dict[int, int]) -> np.ndarray:
    require(path, DOWNLOAD_STEP)
    try:  # 3.7M lines: numpy's parser; a few official lines carry an extra column, hence usecols
        table = np.loadtxt(path, usecols=(0, 1, 2), dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise UserError(f"{path} is malformed ({err}); re-extract CUB_200_2011.tgz") from None
    image_ids, attribute_ids, present = table.T
    bad = ~np.isin(image_ids, list(row_of)) | (attribute_ids < 1) | (attribute_ids > NUM_ATTRIBUTES) | ~np.isin(present, (0, 1))
    if bad.any():
        raise UserError(f"{path}: line {int(np.argmax(bad)) + 1} names an unknown image or attribute id "
                        f"or an is_present other than 0/1; re-extract CUB_200_2011.tgz")
    rows = np.array([row_of[i] for i in image_ids.tolist()], dtype=np.int64)
    labels = np.full((len(row_of), NUM_ATTRIBUTES), -1, dtype=np.int64)
    counts = np.zeros_like(labels)
    np.add.at(counts, (rows, attribute_ids - 1), 1)
    labels[rows, attribute_ids - 1] = present
    if (counts != 1).any():
        row, col = np.argwhere(counts != 1)[0]
        image_id = list(row_of)[row]
        raise UserError(f"{path} lists image {image_id}, attribute {col + 1} {counts[row, col]} times "
                        f"(each pair must appear once); re-extract CUB_200_2011.tgz")
    return labels


def format_cub(load_path: Path, save_path: Path) -> list[Path]:
    load_path = Path(load_path)
    root = load_path / "CUB_200_2011"
    if not root.is_dir():
        raise UserError(f"missing folder {root}: {DOWNLOAD_STEP}")
    images = _id_table(root / "images.txt", "path")
    is_train = _id_table(root / "train_test_split.txt", "0|1")
    if set(is_train) != set(images) or not set(is_train.values()) <= {"0", "1"}:
        raise UserError(f"{root / 'train_test_split.txt'} must give 0 or 1 for exactly the ids of images.txt")
    names = _attribute_names(load_path)
    labels = _attribute_labels(root / "attributes" / "image_attribute_labels.txt", {i: r for r, i in enumerate(images)})
    ids = list(images)
    splits = {}
    for split, flag in (("train", "1"), ("val", "0")):
        rows = [r for r, image_id in enumerate(ids) if is_train[image_id] == flag]
        splits[split] = FormattedSplit([images[ids[r]] for r in rows], labels[rows])
    return write_formatted("cub", save_path, splits, names, "cub-200-2011")


def main(argv: list[str] | None = None) -> int:
    args = format_parser(__doc__, "cub").parse_args(argv)
    return run_script(lambda: format_cub(args.load_path, args.save_path))


if __name__ == "__main__":
    sys.exit(main())
