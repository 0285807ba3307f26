"""The cost of computing a batch-level loss on the whole global batch under torchrun.

    python -m benchmarks.whole_batch_cost [--device cpu|cuda] [--steps 30] [--rounds 6]

Starts 2 processes (gloo on the CPU, nccl on 2 GPUs), each training with the tool's own step
(training/engine.train_one_epoch under DistributedDataParallel), and times a step of `LL-R` and
`PU` two ways: on the gathered global batch (`whole_batch`, the default, which gives the numbers
of one process) and on each process's own part (the per-process path, which gave other numbers).
Two models: a linear layer on COCO-size features (the linear modes: the step is tiny, so the
gathers weigh the most) and the digits CNN on 24 x 24 images (PU's MixUp then also gathers the
images and shares out the second forward). The two ways are timed an epoch each in turn; prints the
median ms per step of each and the difference.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from config import LossHyper
from losses import create_loss
from models import MultiLabelModel, create_backbone
from modes.linear import FeatureDataset
from training import distributed, processes
from training.engine import train_one_epoch

LOSSES = ("LL-R", "PU")
CLASSES = 80


class Images(Dataset):
    """Random images with one positive label each, as a training split yields them (image, labels, index)."""

    def __init__(self, count: int, size: int):
        rng = np.random.RandomState(0)
        self.images = torch.from_numpy(rng.randn(count, 3, size, size).astype(np.float32))
        self.labels = torch.zeros(count, CLASSES)
        self.labels[torch.arange(count), torch.from_numpy(rng.randint(0, CLASSES, count))] = 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index], index


def _setups(steps: int) -> dict[str, tuple[Dataset, int, Callable[[], nn.Module]]]:
    """model name -> (training set, global batch, a model maker), the same on every process."""
    rng = np.random.RandomState(0)
    rows = 64 * steps
    labels = np.zeros((rows, CLASSES), np.float32)
    labels[np.arange(rows), rng.randint(0, CLASSES, rows)] = 1
    features = FeatureDataset(rng.randn(rows, 2048).astype(np.float32), labels)
    return {"linear 2048 -> 80, batch 64": (features, 64, lambda: nn.Linear(2048, CLASSES)),
            "digits CNN 24 px, batch 32": (Images(32 * steps, 24), 32,
                                           lambda: MultiLabelModel(create_backbone("digits_cnn", False), CLASSES))}


class _Trainer:
    """One way to train (`whole_batch` or not) a fresh model (seed 0) on `dataset`, an epoch at a time."""

    def __init__(self, make_model: Callable[[], nn.Module], dataset: Dataset, bsize: int, loss: str,
                 whole_batch: bool, device: torch.device):
        torch.manual_seed(0)
        model = make_model().to(device)
        sampler = distributed.batch_sampler(dataset, bsize, True, torch.Generator().manual_seed(0))
        self.loader = DataLoader(dataset, sampler=sampler, batch_size=None) if isinstance(dataset, FeatureDataset) \
            else DataLoader(dataset, batch_sampler=sampler)
        self.loss_fn = create_loss(loss, LossHyper(epochs=10), len(dataset), CLASSES).to(device)
        self.loss_fn.whole_batch = whole_batch  # False: each process's own part, as before
        self.loss_fn.attach_train_labels(dataset.labels)
        self.loss_fn.start_epoch(2, lambda: None)  # LL-R rejects from epoch 2 on
        self.model = distributed.wrap(model, device, sync_bn=False)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.device = device

    def step_ms(self) -> tuple[float, float]:
        """ms per step of one epoch: wall-clock, and this process's CPU time (what a busy machine disturbs least)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        train_one_epoch(self.model, self.loader, self.loss_fn, self.optimizer, self.device, 2)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        steps = len(self.loader)
        return 1000 * (time.perf_counter() - start) / steps, 1000 * (time.process_time() - cpu) / steps


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(wall for wall, _ in times), statistics.median(cpu for _, cpu in times)


def _rank(rank: int, port: int, device_kind: str, steps: int, rounds: int, out: Path) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}" if device_kind == "cuda" else "cpu")
    rows = []
    with processes.rendezvous(), processes.process_group(str(device)):
        for name, (dataset, bsize, make_model) in _setups(steps).items():
            for loss in LOSSES:
                ways = [_Trainer(make_model, dataset, bsize, loss, whole, device) for whole in (False, True)]
                times: list[list[tuple[float, float]]] = [[], []]
                for _ in range(rounds):  # the two ways in turn, so that a busy machine slows both alike
                    for way, timed in zip(ways, times):
                        timed.append(way.step_ms())
                (wall_p, cpu_p), (wall_w, cpu_w) = (_medians(timed[1:]) for timed in times)  # round 1 warms up
                rows.append(f"| {name} | `{loss}` | {wall_p:.1f} / {cpu_p:.1f} | {wall_w:.1f} / {cpu_w:.1f} | "
                            f"{wall_w - wall_p:+.1f} / {cpu_w - cpu_p:+.1f} |")
    if rank == 0:
        (out / "rows.txt").write_text("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=6, help="epochs timed per way (the first one not counted)")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit("--device cuda needs 2 GPUs (one process each)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.start_processes(_rank, args=(port, args.device, args.steps, args.rounds, Path(folder)), nprocs=2,
                                              start_method="spawn")
        rows = (Path(folder) / "rows.txt").read_text()
    backend = "gloo, CPU" if args.device == "cpu" else "nccl, 2 GPUs"
    print(f"median ms per training step (wall-clock / process 0's CPU time), 2 processes ({backend}), "
          f"torch {torch.__version__}")
    print("| model | loss | per process | whole batch | difference |\n| --- | --- | --- | --- | --- |")
    print(rows)


if __name__ == "__main__":
    main()
