"""Sample the observed labels from the full label matrices: single-positive, or a known fraction.

Writes `formatted_{train,val}_labels_obs.npy` (+1 observed positive, 0 unknown,
-1 observed negative) beside `formatted_{train,val}_labels.npy`, and
`observed_labels.json`, the protocol they follow (runs record it, so that results
of the two protocols are never mixed).

The procedure is the reference one (Cole et al. 2021), kept byte for byte so
that observed labels sampled here equal the published ones: for each split a
fresh `RandomState(seed)`; for each row in order, shuffle the indices of its
positives and keep the first `num_pos`, then shuffle the indices of its
negatives and keep the first `num_neg`. The negatives are shuffled even when
`num_neg` is 0: that draw advances the generator, and skipping it would change
every later row.

    python -m preproc.generate_observed_labels --dataset coco [--num-pos 1 --num-neg 0 --seed 1200]

The partial-label protocol of PU-MLC (Yuan, Zhang, Huang, ICME 2024), `--known-ratio
R`: every entry of the official train matrix, positive or negative alike, is kept
(as +1 or -1) independently with probability R, else unknown (0). The mask is one
(N, C) uniform array drawn in a single call, row-major in dataset order, from
`RandomState(seed)`, kept where it is below R: for the same seed it equals the
authors' `np.random.seed(seed); np.random.rand(N, C) < R`, without reseeding NumPy's
global generator. Only the train labels are masked: the official val file (our test
set) keeps its full labels, as the authors' test set.

    python -m preproc.generate_observed_labels --dataset coco --known-ratio 0.1 --seed 0
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import argparse
import sys
from pathlib import Path

import numpy as np

from errors import UserError
from fileio import load_npy, read_json, save_npy_atomic, write_json_atomic
from presets import PRESETS, dataset_dir, dataset_name, how_to_prepare

SPLITS = ("train", "val")
PROTOCOL_FILE = "observed_labels.json"


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


def observe_known_ratio(labels: np.ndarray, known_ratio: float, rng: np.random.RandomState) -> np.ndarray:
    """Each entry kept (+1 positive, -1 negative) iff its draw of one (N, C) uniform array is below `known_ratio`."""
    keep = rng.rand(*labels.shape) < known_ratio
    return np.where(keep, np.where(labels == 1, 1.0, -1.0), 0.0).astype(labels.dtype)


def full_observation(labels: np.ndarray) -> np.ndarray:
    """Every label known: +1 positives, -1 negatives."""
    return np.where(labels == 1, 1.0, -1.0).astype(labels.dtype)


def generate_observed_labels(data_dir: Path, num_pos: int = 1, num_neg: int = 0, seed: int = 1200,
                             known_ratio: float | None = None, dataset: str | None = None) -> list[Path]:
    """Sample and save the observed labels of both splits; returns the written paths.

    `known_ratio` (PU-MLC's protocol) replaces the per-image sampling of `num_pos` / `num_neg`;
    `dataset` names the folder's dataset in the errors' hints.
    """
    if known_ratio is not None:
        if not 0.0 < known_ratio <= 1.0:
            raise UserError(f"--known-ratio must be in (0, 1], got {known_ratio}")
        if (num_pos, num_neg) != (1, 0):
            raise UserError("--known-ratio draws every observed label itself; drop --num-pos / --num-neg")
    if num_pos != -1 and num_pos < 1:
        raise UserError(f"--num-pos must be >= 1 (or -1 for all positives), got {num_pos}")
    if num_neg != -1 and num_neg < 0:
        raise UserError(f"--num-neg must be >= 0 (or -1 for all negatives), got {num_neg}")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {seed} (NumPy's seed range)")
    fix = how_to_prepare(dataset, data_dir)
    matrices = {}
    for split in SPLITS:  # validate both before writing either
        labels = load_npy(data_dir / f"formatted_{split}_labels.npy", fix)
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise UserError(f"{data_dir}/formatted_{split}_labels.npy must be an (N, C) matrix of 0/1 values; {fix}")
        matrices[split] = labels
    written = []
    for split, labels in matrices.items():
        if known_ratio is None:
            obs = observe_uniform(labels, num_pos, num_neg, np.random.RandomState(seed))
        else:
            obs = observe_known_ratio(labels, known_ratio, np.random.RandomState(seed)) if split == "train" \
                else full_observation(labels)
        written.append(save_npy_atomic(data_dir / f"formatted_{split}_labels_obs.npy", obs))
    protocol = {"protocol": "single_positive", "num_pos": num_pos, "num_neg": num_neg, "seed": seed} \
        if known_ratio is None else {"protocol": "known_ratio", "known_ratio": known_ratio, "seed": seed}
    written.append(write_json_atomic(data_dir / PROTOCOL_FILE, protocol))
    return written


def label_protocol(data_dir: Path) -> dict:
    """The protocol of the observed labels in `data_dir`, as recorded when they were sampled."""
    path = data_dir / PROTOCOL_FILE
    if not path.is_file():  # sampled before the protocol was recorded: by the single-positive sampler
        return {"protocol": "unrecorded (single_positive before observed_labels.json existed)"}
    return read_json(path, "the observed-label protocol")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=dataset_name,
                        help=f"a benchmark ({', '.join(sorted(PRESETS))}) or the name of a dataset of your own, "
                             f"whose folder --data-dir then gives")
    parser.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset> for a benchmark)")
    parser.add_argument("--num-pos", type=int, default=1, help="observed positives per image (-1: all)")
    parser.add_argument("--num-neg", type=int, default=0, help="observed negatives per image (-1: all)")
    parser.add_argument("--seed", type=int, default=1200, help="seed of the sampler (default: 1200; PU-MLC's authors use 0)")
    parser.add_argument("--known-ratio", type=float,
                        help="PU-MLC's protocol: keep each train label, positive or negative, with this probability "
                             "(the authors use 0.1); the test labels stay complete")
    args = parser.parse_args(argv)
    try:
        for path in generate_observed_labels(dataset_dir(args.dataset, args.data_dir, "--dataset"), args.num_pos,
                                             args.num_neg, args.seed, args.known_ratio, args.dataset):
            print(f"wrote {path}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
