"""The one digits fixture: the embedded dataset built once per test run in a temp folder, and slices of it;
`main_py_pids`, the main.py processes training into a run folder (for tests that stop them); and
`shapes_dataset`, a tiny dataset of our own whose images flip."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fileio import save_npy_atomic
from preproc.format_digits import format_digits
from preproc.generate_observed_labels import generate_observed_labels
from presets import DATA_ROOT

SMALL_TRAIN, SMALL_TEST = 120, 60  # official train rows (our train + val) and test rows of `small_digits`
SHAPES_TRAIN, SHAPES_TEST, SHAPES_CLASSES = 56, 20, 4  # `shapes_dataset`: 45 train rows, 11 val, 20 test


@pytest.fixture(scope="session")
def digits_master(tmp_path_factory) -> Path:
    """The full digits dataset (4,000 / 1,000 images); read it, never change it."""
    root = tmp_path_factory.mktemp("digits")
    format_digits(root)
    generate_observed_labels(root)
    return root


def slice_digits(master: Path, dst: Path, n_train: int, n_test: int, copy_images: bool) -> Path:
    """The first rows of each official split of `master` in `dst`: its formatted files, and its
    images copied (safe to damage) or the whole image folder linked."""
    for split, n in (("train", n_train), ("val", n_test)):
        for kind in ("images", "labels", "labels_obs"):
            save_npy_atomic(dst / f"formatted_{split}_{kind}.npy", np.load(master / f"formatted_{split}_{kind}.npy")[:n])
        if copy_images:
            for name in np.load(dst / f"formatted_{split}_images.npy"):
                (dst / "images" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(master / "images" / name, dst / "images" / name)
    if not copy_images:
        (dst / "images").symlink_to(master / "images")
    return dst


@pytest.fixture(scope="session")
def small_digits(digits_master, tmp_path_factory) -> Path:
    """120 official train / 60 test rows of digits with their own copies of the images: runs take seconds."""
    return slice_digits(digits_master, tmp_path_factory.mktemp("small_digits"), SMALL_TRAIN, SMALL_TEST, copy_images=True)


@pytest.fixture
def digits_dir(digits_master: Path, tmp_path: Path) -> Path:
    """A private copy of the full dataset's formatted files (images shared by symlink), safe to corrupt."""
    copy = tmp_path / "digits"
    copy.mkdir()
    for f in digits_master.iterdir():
        if f.is_dir():
            (copy / f.name).symlink_to(f)
        else:
            shutil.copy(f, copy / f.name)
    return copy


@pytest.fixture(scope="session")
def tiny_clip() -> Path:
    """The shipped open_clip model config of a CLIP small enough for a CPU (randomly initialised)."""
    return DATA_ROOT / "tiny_clip.json"


def main_py_pids(run: Path) -> list[int]:
    """The main.py processes whose command line names the run folder `run`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:  # it ended meanwhile
            continue
        if any(arg.endswith(b"main.py") for arg in argv) and str(run).encode() in argv:
            pids.append(int(proc.name))
    return pids


def shapes_dataset(root: Path, features: bool = True) -> Path:
    """A dataset of our own (`-d shapes --data-dir ROOT -m digits_cnn`): 56 official train and 20 test images
    of 24 x 24 random pixels with 4 classes, its class names (VLPL scores it with a CLIP), and cached features."""
    rng = np.random.RandomState(0)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("circle\nsquare\nline\ndot\n")
    for split, count in (("train", SHAPES_TRAIN), ("val", SHAPES_TEST)):
        full = (rng.rand(count, SHAPES_CLASSES) < 0.4).astype(np.float32)
        full[np.arange(count), rng.randint(0, SHAPES_CLASSES, count)] = 1
        obs = np.zeros_like(full)
        obs[np.arange(count), [rng.choice(np.flatnonzero(row)) for row in full]] = 1
        (root / split).mkdir(parents=True)
        for i in range(count):  # asymmetric content, so that a flip changes what a model sees
            Image.fromarray(rng.randint(0, 255, (24, 24, 3)).astype(np.uint8)).save(root / split / f"{i}.png")
        np.save(root / f"formatted_{split}_images.npy", np.array([f"{split}/{i}.png" for i in range(count)]))
        np.save(root / f"formatted_{split}_labels.npy", full)
        np.save(root / f"formatted_{split}_labels_obs.npy", obs)
        if features:
            np.save(root / f"{split}_features_digits_cnn.npy", rng.randn(count, 6).astype(np.float32))
    return root
