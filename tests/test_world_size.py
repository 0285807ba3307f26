"""The same numbers on any number of processes: every registered loss trained by 2 gloo processes
equals the single-process run (weights, loss state, per-epoch losses and metrics to 1e-5), and a
2-process run interrupted and resumed in 1 process gives the uninterrupted epochs.

Linear mode on cached features (fast: no backbone), 3 epochs of 45 training rows in global
batches of 8: the last batch of 5 splits 3 + 2. The 2-process runs are forked ranks calling
`main([...])` for every loss in turn, as torchrun would start them (WORLD_SIZE, RANK, ...).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from losses import LOSSES
from main import main
from presets import DATA_ROOT

EPOCHS, STOP = 3, 3  # the interrupted runs stop during epoch 3: last.pt holds epoch 2
NUM_OFFICIAL_TRAIN, NUM_TEST, C = 56, 20, 4  # 45 train rows (batches 8 x 5 + 5), 11 val, 20 test


def _args(data: Path, loss: str, out: Path) -> list[str]:
    return ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", "0",
            "--train-mode", "linear_fixed_features", "-l", loss, "--bsize", "8", "--lr", "1e-2",
            "--epochs", str(EPOCHS), "--warmup-epochs", "1", "--expected-pos", "1.5",
            "--clip-model", str(DATA_ROOT / "tiny_clip.json"), "--out", str(out)]  # the CLIP of VLPL's scores


def make_dataset(root: Path, features: bool = True) -> Path:
    """A dataset of our own: tiny images (VLPL scores them with a CLIP), labels, and cached features."""
    rng = np.random.RandomState(0)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("circle\nsquare\nline\ndot\n")
    for split, count in (("train", NUM_OFFICIAL_TRAIN), ("val", NUM_TEST)):
        full = (rng.rand(count, C) < 0.4).astype(np.float32)
        full[np.arange(count), rng.randint(0, C, count)] = 1
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


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def as_rank(rank: int, size: int, port: int) -> None:
    """This process's environment as torchrun would set it for `rank` of `size`."""
    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def interrupt_during(epoch: int):
    """Ctrl-C in the training loop of `epoch`, once the epochs before it are checkpointed (as a signal would)."""
    from training import engine

    real = engine.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        if args[5] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    engine.train_one_epoch = train_one_epoch


def _ranks(rank: int, runs: list[tuple[list[str], int]], interrupt: int | None, codes: Path) -> None:
    """Rank `rank` of 2: `main(args)` for each (args, port) of `runs`, the return codes written to `codes`."""
    if interrupt is not None:
        interrupt_during(interrupt)
    returned = []
    for args, port in runs:
        as_rank(rank, 2, port)
        returned.append(main(args))
    (codes / f"rank{rank}.json").write_text(json.dumps(returned))


def run_two_processes(runs: list[list[str]], folder: Path, interrupt: int | None = None) -> list[list[int]]:
    """Each of `runs` (main.py arguments) by 2 forked ranks in turn; the return codes of each rank."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(runs))
    torch.multiprocessing.start_processes(_ranks, args=(list(zip(runs, ports)), interrupt, folder), nprocs=2,
                                          start_method="fork")
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def epochs_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_epochs(one: list[dict], other: list[dict], loss: str) -> None:
    assert [e["epoch"] for e in other] == [e["epoch"] for e in one] == list(range(1, EPOCHS + 1)), loss
    for a, b in zip(one, other):
        where = (loss, a["epoch"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5), where
        assert b["train_terms"] == pytest.approx(a["train_terms"], abs=1e-5), where
        for split in ("val", "test"):
            assert b[split] == pytest.approx(a[split], abs=1e-5), (*where, split)


def assert_same_state(one: Path, other: Path, loss: str) -> None:
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (one, other))
    for part in ("model", "loss_state"):
        assert list(b[part]) == list(a[part]), (loss, part)
        for key, value in a[part].items():
            if value.is_floating_point():
                torch.testing.assert_close(b[part][key], value, atol=1e-5, rtol=0, msg=f"{loss} {part} {key}")
            else:  # LL-Cp's corrections, APL's pseudo-label marks
                assert torch.equal(b[part][key], value), (loss, part, key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every registered loss: one process, 2 processes, and 2 processes interrupted during epoch 3."""
    root = tmp_path_factory.mktemp("world_size")
    data = make_dataset(root / "shapes")
    names = list(LOSSES)
    for loss in names:
        assert main(_args(data, loss, root / "one" / loss)) == 0, loss
    codes = run_two_processes([_args(data, loss, root / "two" / loss) for loss in names], root / "two_codes")
    assert codes == [[0] * len(names)] * 2
    codes = run_two_processes([_args(data, loss, root / "cut" / loss) for loss in names], root / "cut_codes",
                              interrupt=STOP)
    assert codes == [[130] * len(names)] * 2
    for loss in names:  # resumed in one process
        assert main(["--resume", str(root / "cut" / loss)]) == 0, loss
    return {"one": root / "one", "two": root / "two", "cut": root / "cut"}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_processes_equal_one(runs, loss):
    one, two = runs["one"] / loss, runs["two"] / loss
    assert_same_epochs(epochs_of(one), epochs_of(two), loss)
    assert_same_state(one, two, loss)
    results = json.loads((two / "results.json").read_text())
    assert (results["world_size"], results["bsize_global"], results["bsize_per_process"]) == (2, 8, 4)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_processes_interrupted_then_resumed_in_one_equal_one(runs, loss):
    one, cut = runs["one"] / loss, runs["cut"] / loss
    assert_same_epochs(epochs_of(one), epochs_of(cut), loss)
    assert_same_state(one, cut, loss)
