"""Sample the observed (single-positive) labels from the full label matrices.

Writes `formatted_{train,val}_labels_obs.npy` (+1 observed positive, 0 unknown,
-1 observed negative) beside `formatted_{train,val}_labels.npy`.

The procedure is the reference one (Cole et al. 2021), kept byte for byte so
that observed labels sampled here equal the published ones: for each split a
fresh `RandomState(seed)`; for each row in order, shuffle the indices of its
positives and keep the first `num_pos`, then shuffle the indices of its
negatives and keep the first `num_neg`. The negatives are shuffled even when
`num_neg` is 0: that draw advances the generator, and skipping it would change
every later row.

    python -m preproc.generate_observed_labels --dataset coco [--num-pos 1 --num-neg 0 --seed 1200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from errors import UserError
from fileio import load_npy, save_npy_atomic
from presets import DATA_ROOT, PRESETS

SPLITS = ("train", "val")


def _sample(row: np.ndarray, value: float, count: int, rng: np.random.RandomState) -> np.ndarray:
    idx = np.nonzero(row == value)[0]
    rng.shuffle(idx)
    return idx if count == -1 else idx[:count]


def observe_uniform(labels: np.ndarray, num_pos: int, num_neg: int, rng: np.random.RandomState) -> np.ndarray:
    """Observed-label matrix (same dtype as `labels`); -1 for a count means "all"."""
    obs = np.zeros_like(labels)
    for i in range(labels.shape[0]):
        obs[i, _sample(labels[i], 1.0, num_pos, rng)] = 1.0
        obs[i, _sample(labels[i], 0.0, num_neg, rng)] = -1.0
    return obs


def generate_observed_labels(data_dir: Path, num_pos: int = 1, num_neg: int = 0, seed: int = 1200) -> list[Path]:
    """Sample and save the observed labels of both splits; returns the written paths."""
    if num_pos != -1 and num_pos < 1:
        raise UserError(f"--num-pos must be >= 1 (or -1 for all positives), got {num_pos}")
    if num_neg != -1 and num_neg < 0:
        raise UserError(f"--num-neg must be >= 0 (or -1 for all negatives), got {num_neg}")
    fix = f"format the dataset first (see {data_dir}/README.md)"
    matrices = {}
    for split in SPLITS:  # validate both before writing either
        labels = load_npy(data_dir / f"formatted_{split}_labels.npy", fix)
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise UserError(f"{data_dir}/formatted_{split}_labels.npy must be an (N, C) matrix of 0/1 values; {fix}")
        matrices[split] = labels
    written = []
    for split, labels in matrices.items():
        obs = observe_uniform(labels, num_pos, num_neg, np.random.RandomState(seed))
        written.append(save_npy_atomic(data_dir / f"formatted_{split}_labels_obs.npy", obs))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset>)")
    parser.add_argument("--num-pos", type=int, default=1, help="observed positives per image (-1: all)")
    parser.add_argument("--num-neg", type=int, default=0, help="observed negatives per image (-1: all)")
    parser.add_argument("--seed", type=int, default=1200)
    args = parser.parse_args(argv)
    try:
        for path in generate_observed_labels(args.data_dir or DATA_ROOT / args.dataset, args.num_pos, args.num_neg, args.seed):
            print(f"wrote {path}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
