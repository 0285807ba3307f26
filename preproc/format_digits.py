"""Build the embedded `digits` dataset: multi-label mosaics of real handwritten digits.

Each image is a 3x3 grid of 8x8 cells (24x24 pixels, grayscale PNG) holding 1 to 4
digits from scikit-learn's bundled copy of the UCI handwritten digits (1,797 real
8x8 scans, no download), blank elsewhere. Its labels are the set of digit classes
present: 10 classes, about 2.3 positives per image.

The source digits are split disjointly before any mosaic is drawn, so no
handwritten sample appears in both the train (official train) and the test
(official val) mosaics. Output layout is that of the real benchmarks:

    data/digits/images/{train,test}/NNNNNN.png
    data/digits/formatted_{train,val}_{images,labels}.npy
    data/digits/classes.txt
    data/digits/variant.json           the builder's version, seed and counts

A fixed seed makes the output byte-identical run to run.

    python -m preproc.format_digits [--save-path data/digits]
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from class_names import DIGITS_CLASSES as CLASS_NAMES
from dataset_provenance import DIGITS_VARIANT, write_variant
from presets import DATA_ROOT

GRID, CELL = 3, 8
NUM_TRAIN, NUM_TEST = 4000, 1000  # mosaics; train is later split 80/20 into train/val
TRAIN_SOURCE_FRAC = 2 / 3  # share of the 1,797 source digits reserved for train mosaics
SEED = 0
OUTPUTS = ("images", "classes.txt", "variant.json", *(f"formatted_{s}_{k}.npy" for s in ("train", "val") for k in ("images", "labels")))


def _mosaics(digits: np.ndarray, targets: np.ndarray, count: int, rng: np.random.RandomState):
    """Yield (24x24 uint8 image, 0/1 label vector) pairs drawn from the given source digits."""
    for _ in range(count):
        k = rng.randint(1, 5)
        cells = rng.choice(GRID * GRID, size=k, replace=False)
        picks = rng.randint(0, len(digits), size=k)
        image = np.zeros((GRID * CELL, GRID * CELL), dtype=np.uint8)
        labels = np.zeros(len(CLASS_NAMES))
        for cell, pick in zip(cells, picks):
            r, c = divmod(int(cell), GRID)
            image[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = digits[pick]
            labels[targets[pick]] = 1.0
        yield image, labels


def _write_split(root: Path, folder: str, split: str, digits, targets, count, rng) -> None:
    (root / "images" / folder).mkdir(parents=True)
    names, rows = [], []
    for i, (image, labels) in enumerate(_mosaics(digits, targets, count, rng)):
        name = f"{folder}/{i:06d}.png"
        Image.fromarray(image, mode="L").save(root / "images" / name)
        names.append(name)
        rows.append(labels)
    np.save(root / f"formatted_{split}_images.npy", np.array(names))
    np.save(root / f"formatted_{split}_labels.npy", np.stack(rows))


def format_digits(save_path: Path = DATA_ROOT / "digits") -> Path:
    """Write the dataset to `save_path` (built in a temporary folder, then moved in)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    source = load_digits()
    pixels = np.round(source.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.RandomState(SEED)
    order = rng.permutation(len(pixels))
    n_train = int(round(TRAIN_SOURCE_FRAC * len(pixels)))
    train_src, test_src = order[:n_train], order[n_train:]

    save_path = Path(save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=save_path, prefix=".building-"))
    try:
        _write_split(tmp, "train", "train", pixels[train_src], source.target[train_src], NUM_TRAIN, rng)
        _write_split(tmp, "test", "val", pixels[test_src], source.target[test_src], NUM_TEST, rng)
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        write_variant(tmp, DIGITS_VARIANT, seed=SEED, grid=GRID, train_images=NUM_TRAIN, test_images=NUM_TEST)
        shutil.rmtree(save_path / "images", ignore_errors=True)
        for name in OUTPUTS:  # the .npy files last: their presence means the images are complete
            os.replace(tmp / name, save_path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return save_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-path", type=Path, default=DATA_ROOT / "digits")
    args = parser.parse_args(argv)
    print(f"wrote {format_digits(args.save_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
