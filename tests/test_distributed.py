"""Many processes (torchrun): the batch sampler, and 2 gloo CPU processes against one process.

The 2-process runs start the ranks as torchrun does (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), without torchrun's agent, so that each rank can be given its own working folder
and a --out of its own that must stay empty: only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from errors import UserError
from main import main
from presets import REPO_ROOT
from training import distributed
from training.distributed import ShardedBatchSampler, World, even_shares, share_weight, step_shares

NUM_TRAIN, NUM_VAL, NUM_TEST, C = 100, 25, 37, 4  # the val split is odd: 13 + 12 rows over 2 processes
EPOCHS = 12
RUN = ["-d", "digits", "-g", "cpu", "--num-workers", "0", "--train-mode", "linear_fixed_features", "-l", "EM_APL",
       "--warmup-epochs", "1", "--bsize", "16", "--lr", "1e-2", "--epochs", str(EPOCHS)]


# --- the batch sampler ---------------------------------------------------------------------

def _rank_batches(n: int, bsize: int, size: int, seed: int) -> list[list[list[int]]]:
    """Per rank, its batches of one epoch, drawn as the DataLoader draws (base seed, then the permutation)."""
    out = []
    for rank in range(size):
        generator = torch.Generator().manual_seed(seed)
        sampler = ShardedBatchSampler(torch.utils.data.RandomSampler(range(n), generator=generator), bsize,
                                      World(rank, size, rank))
        loader = DataLoader(range(n), batch_sampler=sampler, generator=generator)
        out.append([batch.tolist() for batch in loader])
    return out


@pytest.mark.parametrize("n, bsize, size", [(100, 16, 2), (101, 16, 4), (96, 16, 2), (23, 8, 3)])
def test_sharded_batches_split_the_single_process_batches(n, bsize, size):
    single = [batch.tolist() for batch in DataLoader(range(n), batch_size=bsize, shuffle=True,
                                                     generator=torch.Generator().manual_seed(7))]
    ranks = _rank_batches(n, bsize, size, seed=7)
    assert all(len(batches) == len(single) for batches in ranks)  # every rank runs the same number of steps
    for step, batch in enumerate(single):
        parts = [ranks[rank][step] for rank in range(size)]
        assert sum(parts, []) == batch  # the same global batch, in the same order
        assert [len(part) for part in parts] == even_shares(len(batch), size)
    covered = sorted(row for batches in ranks for batch in batches for row in batch)
    assert covered == list(range(n))  # every example exactly once, no padding


def test_share_weights_make_the_global_mean(monkeypatch):
    size, bsize, n = 3, 9, 23  # last batch 5 -> shares 2, 2, 1
    for rank in range(size):
        monkeypatch.setenv("WORLD_SIZE", str(size))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        sampler = ShardedBatchSampler(range(n), bsize, World(rank, size, rank))
        shares = step_shares(DataLoader(range(n), batch_sampler=sampler))
        assert shares == [[3, 3, 3], [3, 3, 3], [2, 2, 1]]
        assert [share_weight(counts) for counts in shares] == [1.0, 1.0, [1.2, 1.2, 0.6][rank]]


def test_a_last_batch_smaller_than_the_world_is_refused():
    with pytest.raises(UserError, match="last batch of each epoch holds 1 of the 17"):
        ShardedBatchSampler(range(17), 8, World(0, 2, 0))


def test_one_process_without_torchrun_is_not_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == World() and distributed.is_main()


# --- 2 gloo processes ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """Labels and cached features only (a linear layer: no BatchNorm, so 1 and 2 processes agree)."""
    root = tmp_path_factory.mktemp("ddp_features")
    rng = np.random.RandomState(0)
    for split, count in (("train", NUM_TRAIN + NUM_VAL), ("val", NUM_TEST)):
        full = (rng.rand(count, C) < 0.4).astype(np.float32)
        full[np.arange(count), rng.randint(0, C, count)] = 1
        obs = np.zeros_like(full)
        obs[np.arange(count), [rng.choice(np.flatnonzero(row)) for row in full]] = 1
        np.save(root / f"formatted_{split}_images.npy", np.array([f"{split}/{i}.png" for i in range(count)]))
        np.save(root / f"formatted_{split}_labels.npy", full)
        np.save(root / f"formatted_{split}_labels_obs.npy", obs)
        np.save(root / f"{split}_features_digits_cnn.npy", rng.randn(count, 6).astype(np.float32))
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ranks(args: list[list[str]], folders: list[Path]) -> list[subprocess.Popen]:
    """Rank r runs `main.py args[r]` in folders[r], as torchrun would start it."""
    port = _free_port()
    procs = []
    for rank, (rank_args, folder) in enumerate(zip(args, folders)):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "WORLD_SIZE": str(len(folders)), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *rank_args], cwd=folder, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:  # a rank left waiting for a dead one is not left running
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0] * len(procs), outputs
    return outputs


def _epochs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(features, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_single") / "run"
    assert main([*RUN, "--data-dir", str(features), "--out", str(out)]) == 0
    return out


def test_two_processes_match_one_and_only_rank_0_writes(features, single_run, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "rank1_out"
    folders = [tmp_path / "cwd0", tmp_path / "cwd1"]
    args = [*RUN, "--data-dir", str(features)]
    procs = _start_ranks([[*args, "--out", str(out)], [*args, "--out", str(elsewhere)]], folders)
    outputs = _wait(procs)
    # rank 1 wrote nothing: not its own --out (rank 0's --out is the run's), not its working folder
    assert not elsewhere.exists() and list(folders[1].iterdir()) == []
    assert "epoch" not in outputs[1]  # and it logged nothing but errors
    results = json.loads((out / "results.json").read_text())
    assert (results["world_size"], results["bsize_global"], results["bsize_per_process"]) == (2, 16, 8)

    one, two = _epochs(single_run), _epochs(out)
    assert len(one) == len(two) == EPOCHS
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        # the odd-sized val split and the test split are scored once per example: the same metrics
        for split in ("val", "test"):
            for name, value in a[split].items():
                assert b[split][name] == pytest.approx(value, abs=1e-5), (a["epoch"], split, name)
    w1 = torch.load(single_run / "last.pt", weights_only=True)
    w2 = torch.load(out / "last.pt", weights_only=True)
    assert list(w2["model"]) == ["weight", "bias"]  # the unwrapped module: no `module.` prefix
    for key in w1["model"]:
        torch.testing.assert_close(w2["model"][key], w1["model"][key], atol=1e-5, rtol=0)
    # APL's soft negatives, chosen from the gathered train scores, as in one process
    assert torch.equal(w2["loss_state"]["pseudo"], w1["loss_state"]["pseudo"])


def test_kill_9_then_resume_in_one_process_gives_the_uninterrupted_epochs(features, single_run, tmp_path):
    out = tmp_path / "run"
    folders = [tmp_path / "cwd0", tmp_path / "cwd1"]
    args = [*RUN, "--data-dir", str(features), "--out", str(out)]
    procs = _start_ranks([args, args], folders)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and time.monotonic() < deadline:  # epoch 1 is checkpointed
        time.sleep(0.02)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()
    killed_at = len(_epochs(out))
    assert 1 <= killed_at < EPOCHS, "the run ended before it could be killed; make it longer"
    # resumed in one process: the global batch is the same, so the epochs are too (N processes -> M)
    assert main(["--resume", str(out)]) == 0
    resumed, uninterrupted = _epochs(out), _epochs(single_run)
    assert [e["epoch"] for e in resumed] == list(range(1, EPOCHS + 1))
    for a, b in zip(uninterrupted, resumed):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert (b["val_map"], b["test_map"]) == pytest.approx((a["val_map"], a["test_map"]), abs=1e-5)


def _scoring_worker(rank: int, port: int, folder: Path) -> None:
    """One rank scoring a 25-row split (13 + 12 rows) with the same weights as one process."""
    from training.engine import evaluate

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dataset, model = _scoring_case()
    with distributed.process_group("cpu"):
        loader = DataLoader(dataset, sampler=distributed.batch_sampler(dataset, 8, False), batch_size=None)
        torch.save(evaluate(model, loader, torch.device("cpu"), 0.5, "val"), folder / f"metrics{rank}.pt")


def _scoring_case():
    from modes.linear import FeatureDataset

    torch.manual_seed(1)
    labels = (torch.rand(NUM_VAL, C) < 0.4).float()
    return FeatureDataset(torch.randn(NUM_VAL, 6).numpy(), labels.numpy()), torch.nn.Linear(6, C)


def test_an_odd_split_is_scored_once_per_example_on_two_ranks(tmp_path):
    from training.engine import evaluate

    dataset, model = _scoring_case()
    single = evaluate(model, DataLoader(dataset, sampler=distributed.batch_sampler(dataset, 8, False), batch_size=None),
                      torch.device("cpu"), 0.5, "val")
    torch.multiprocessing.start_processes(_scoring_worker, args=(_free_port(), tmp_path), nprocs=2,
                                          start_method="fork")
    for rank in (0, 1):
        assert torch.load(tmp_path / f"metrics{rank}.pt", weights_only=False) == single  # exactly


def test_batch_flags_under_torchrun(monkeypatch, tmp_path):
    from cli import parse_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    base = ["-g", "cpu", "--out", str(tmp_path / "run")]
    with pytest.raises(UserError, match="--bsize 15 is the global batch, split among the 2 processes"):
        parse_args([*base, "--bsize", "15"])
    cfg = parse_args([*base, "--per-gpu-bsize", "35"])  # PU-MLC's 35 per GPU
    assert (cfg.bsize, cfg.per_gpu_bsize, cfg.to_dict()["per_gpu_bsize"]) == (70, 35, 35)
    with pytest.raises(UserError, match="exclude each other"):
        parse_args([*base, "--bsize", "8", "--per-gpu-bsize", "4"])
    with pytest.raises(UserError, match="--sync-bn .* CUDA only"):
        parse_args([*base, "--sync-bn"])
