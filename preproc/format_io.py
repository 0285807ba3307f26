"""What the benchmark formatting scripts share: reading source files, writing formatted splits.

Each `format_<dataset>.py` reads its dataset's own files into one `FormattedSplit`
per official split and hands them to `write_formatted`, which validates
everything first and only then writes (each file atomically):

    formatted_{train,val}_images.npy   (N,) str, relative to the dataset's image root
    formatted_{train,val}_labels.npy   (N, C) 0/1, dtype as the reference scripts
    classes.txt                        one class name per label column
    variant.json                       which release/variant this folder holds

Counts that differ from the published ones are a warning, not an error, so the
scripts also run on partial downloads and on the tests' miniature trees.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dataset_provenance import count_mismatch, write_variant
from datasets import resolve_images
from errors import UserError
from fileio import save_npy_atomic, write_text_atomic
from presets import DATA_ROOT, PRESETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormattedSplit:
    images: list[str]  # relative to the image root
    labels: np.ndarray  # (N, C)


def require(path: Path, step: str) -> Path:
    """`path` if it exists, else a UserError naming it and the download step that provides it."""
    if not Path(path).exists():
        raise UserError(f"missing {path}: {step}")
    return Path(path)


def read_lines(path: Path, step: str) -> list[str]:
    """Non-empty, stripped lines of a text file (tolerates CRLF and trailing blanks)."""
    text = require(path, step).read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]




def write_formatted(
    dataset: str,
    save_path: Path,
    splits: dict[str, FormattedSplit],
    class_names: list[str],
    variant: str,
    **variant_details,
) -> list[Path]:
    """Validate the splits, warn on unexpected counts, then write every output file."""
    save_path = Path(save_path)
    image_root = save_path / PRESETS[dataset].image_root
    for split, data in splits.items():
        if data.labels.shape != (len(data.images), len(class_names)):
            raise ValueError(f"{split}: labels {data.labels.shape} do not match "
                             f"{len(data.images)} images x {len(class_names)} classes")
        if len(data.images) == 0:
            raise UserError(f"the {dataset} {split} split has no image; check the source files")
        # ids come from the user's files: refuse any that would escape the image root
        resolve_images(np.array(data.images), image_root, Path(f"the {dataset} {split} source files"), check_exists=False)
    warning = count_mismatch(dataset, variant, len(splits["train"].images), len(splits["val"].images))
    if warning:
        log.warning(f"warning: {warning}")

    save_path.mkdir(parents=True, exist_ok=True)
    written = []
    for split, data in splits.items():
        written.append(save_npy_atomic(save_path / f"formatted_{split}_images.npy", np.array(data.images)))
        written.append(save_npy_atomic(save_path / f"formatted_{split}_labels.npy", data.labels))
    write_text_atomic(save_path / "classes.txt", "\n".join(class_names) + "\n")
    written.append(save_path / "classes.txt")
    written.append(write_variant(save_path, variant, **variant_details))
    for split, data in splits.items():
        log.info(f"{dataset} {split}: {len(data.images):,} images, {data.labels.shape[1]} classes, "
                 f"{data.labels.sum(1).mean():.2f} positives per image")
    return written


def format_parser(doc: str, dataset: str) -> argparse.ArgumentParser:
    """`--load-path` / `--save-path`, both defaulting to data/<dataset> as in the references."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--load-path", type=Path, default=DATA_ROOT / dataset,
                        help=f"folder holding the downloaded dataset (default: data/{dataset})")
    parser.add_argument("--save-path", type=Path, default=DATA_ROOT / dataset,
                        help=f"folder for the formatted files (default: data/{dataset})")
    return parser


def run_script(build: Callable[[], list[Path]]) -> int:
    """Run a formatting step as a script: one line per written file, UserError -> one line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        for path in build():
            print(f"wrote {path}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
