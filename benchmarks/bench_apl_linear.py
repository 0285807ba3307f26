"""Benchmarks of the linear path: APL selection on a COCO-size score matrix, and a linear-mode epoch on
COCO-size cached features (synthetic values, the real shapes).

    python -m benchmarks.bench_apl_linear [--rows 65665] [--classes 80] [--dim 2048]

Prints the median APL selection time (target: well under 1 s) and the time of one
linear_fixed_features training epoch, batch 16, EM_APL loss (target: seconds).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from config import LossHyper
from losses import create_loss
from methods.apl import select_pseudo_negatives
from modes.linear import FeatureDataset, _batches, single_thread_on_cpu
from training.engine import train_one_epoch


def bench_apl(rows: int, classes: int, repeats: int = 5) -> float:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(rows, classes, generator=gen)
    candidates = torch.rand(rows, classes, generator=gen) > 0.05
    counts = torch.full((classes,), int(0.9 * rows / 5))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        select_pseudo_negatives(scores, candidates, counts)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_linear_epoch(rows: int, classes: int, dim: int, bsize: int) -> tuple[float, int]:
    rng = np.random.RandomState(0)
    features = rng.randn(rows, dim).astype(np.float32)
    labels = np.zeros((rows, classes), np.float32)
    labels[np.arange(rows), rng.randint(0, classes, rows)] = 1
    loader = _batches(FeatureDataset(features, labels), bsize, True, 0)
    model = nn.Linear(dim, classes)
    loss_fn = create_loss("EM_APL", LossHyper(epochs=10, warmup_epochs=5), rows, classes)
    loss_fn.attach_train_labels(torch.from_numpy(labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    with single_thread_on_cpu(torch.device("cpu")):  # as modes.run_linear_mode trains
        train_one_epoch(model, loader, loss_fn, optimizer, torch.device("cpu"), 1)
    return time.perf_counter() - start, len(loader)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=65665)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--bsize", type=int, default=16)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    apl = bench_apl(args.rows, args.classes)
    print(f"APL selection on {args.rows} x {args.classes} scores: {apl * 1000:.1f} ms (median of 5)")
    seconds, steps = bench_linear_epoch(args.rows, args.classes, args.dim, args.bsize)
    print(f"linear epoch on {args.rows} x {args.dim} features, batch {args.bsize} ({steps} steps): {seconds:.1f} s")


if __name__ == "__main__":
    main()
