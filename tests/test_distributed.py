"""Many processes (torchrun): the batch sampler, scoring a split, and 2 gloo CPU processes: only rank 0
writes; bad input, an error in one process and SIGTERM each stop every process with one line.

The 2-process runs start the ranks as torchrun does (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), without torchrun's agent: forked (tests/ranks.py), or as new processes so that each
rank can be given its own working folder and a --out of its own that must stay empty. That
every loss gives the numbers of one process: test_world_size.py.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SHAPES_TRAIN, shapes_dataset
from datasets import SPLIT_SEED, VAL_FRAC, generate_split
from errors import UserError
from presets import REPO_ROOT
from ranks import free_ports, rank_batches, ranks_output, run_two, start_two
from training import distributed, processes
from training.distributed import ShardedBatchSampler, World, even_shares, share_weight, step_shares

NUM_VAL, C = 25, 4  # an odd split: 13 + 12 rows over 2 processes


# --- the batch sampler ---------------------------------------------------------------------

@pytest.mark.parametrize("n, bsize, size", [(100, 16, 2), (101, 16, 4), (96, 16, 2), (23, 8, 3)])
def test_sharded_batches_split_the_single_process_batches(n, bsize, size):
    single = [batch.tolist() for batch in DataLoader(range(n), batch_size=bsize, shuffle=True,
                                                     generator=torch.Generator().manual_seed(7))]
    ranks = rank_batches(n, bsize, size, seed=7)
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
def shapes(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory.mktemp("ddp") / "shapes")


def _linear(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", "0",
            "--train-mode", "linear_fixed_features", "--bsize", "8", "--epochs", "2", *extra, "--out", str(out)]


def _start_ranks(args: list[list[str]], folders: list[Path]) -> list[subprocess.Popen]:
    """Rank r runs `main.py args[r]` in folders[r], as torchrun would start it (a whole new process)."""
    port, = free_ports(1)
    procs = []
    for rank, (rank_args, folder) in enumerate(zip(args, folders)):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "WORLD_SIZE": str(len(folders)), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *rank_args], cwd=folder, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def test_only_rank_0_writes(shapes, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "rank1_out"
    folders = [tmp_path / "cwd0", tmp_path / "cwd1"]
    procs = _start_ranks([_linear(shapes, out), _linear(shapes, elsewhere)], folders)
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:  # a rank left waiting for a dead one is not left running
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    # rank 1 wrote nothing: not its own --out (rank 0's --out is the run's), not its working folder
    assert not elsewhere.exists() and list(folders[1].iterdir()) == []
    assert "epoch" not in outputs[1]  # and it logged nothing but errors
    assert list(torch.load(out / "last.pt", weights_only=True)["model"]) == ["weight", "bias"]  # no `module.`


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


def test_bad_input_is_one_line_from_process_0_and_every_process_exits_2(shapes, tmp_path):
    (tmp_path / "file").write_text("x")
    missing = tmp_path / "missing"
    gaps = shapes_dataset(tmp_path / "gaps", features=False)
    (gaps / "train" / "7.png").unlink()
    cases = [  # (main.py arguments, the line process 0 prints)
        (_linear(shapes, tmp_path / "a", "--bsize", "15"), "error: --bsize 15 is the global batch, split among the 2"),
        (_linear(missing, tmp_path / "b"), f"error: --data-dir {missing} does not exist"),
        (_linear(shapes, tmp_path / "file" / "run"), "error: --out {}: {} is a file, so no folder can be made".format(
            tmp_path / "file" / "run", tmp_path / "file")),
        # an error only process 1 meets is said by process 0, naming it
        ((_linear(shapes, tmp_path / "c"), _linear(missing, tmp_path / "c")),
         f"error: process 1 of 2: --data-dir {missing} does not exist"),
        # found by every process once the flags are parsed, in the process group
        (["-d", "shapes", "--data-dir", str(gaps), "-m", "digits_cnn", "-g", "cpu", "--bsize", "8",
          "--out", str(tmp_path / "d")], "error: 1 of 56 images listed in"),
    ]
    codes, stderr = run_two([args for args, _ in cases], tmp_path / "ranks")
    assert codes == [[2] * len(cases)] * 2
    lines = _errors(stderr[0])
    assert len(lines) == len(cases) and all(line.startswith(start) for line, (_, start) in zip(lines, cases)), lines
    assert _errors(stderr[1]) == [] and "Traceback" not in stderr[0] + stderr[1]
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_an_error_in_one_process_stops_the_other_in_one_line(tmp_path):
    data = shapes_dataset(tmp_path / "shapes", features=False)
    train_rows, _ = generate_split(SHAPES_TRAIN, VAL_FRAC, SPLIT_SEED)
    first_of_rank_1 = rank_batches(len(train_rows), 8, 2, seed=0)[1][0][0]  # in its first batch of epoch 1
    bad = data / "train" / f"{train_rows[first_of_rank_1]}.png"
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "run"
    args = ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", "0",
            "--bsize", "8", "--epochs", "1", "--out", str(out)]
    codes, stderr = run_two([args], tmp_path / "ranks")
    assert codes == [[2], [2]]
    lines = _errors(stderr[0] + stderr[1])
    assert len(lines) == 1 and re.fullmatch(rf"error: process 1 of 2: cannot read image {bad}: .*", lines[0]), lines
    assert "Traceback" not in stderr[0] + stderr[1]
    results = json.loads((out / "results.json").read_text())  # written by process 0, with process 1's error
    assert results["status"] == "failed" and results["reason"] == lines[0].removeprefix("error: ")


def test_sigterm_stops_every_process_as_ctrl_c(shapes, tmp_path):
    out = tmp_path / "run"
    context = start_two([_linear(shapes, out, "--epochs", "500")], tmp_path / "ranks")
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in context.pids():  # what torchrun's agent does on SIGTERM (a batch system's stop)
        os.kill(pid, signal.SIGTERM)
    while not context.join():
        pass
    codes, stderr = ranks_output(tmp_path / "ranks")
    assert codes == [[143], [143]]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and "SIGTERM" in results["reason"]
    assert results["last_checkpoint"] == str(out / "last.pt") and results["last_completed_epoch"] >= 1
    lines = _errors(stderr[0] + stderr[1]) + [line for line in stderr[0].splitlines() if line.startswith("stopped")]
    assert len(lines) == 1 and lines[0].startswith(f"stopped during epoch {results['last_completed_epoch'] + 1} by "
                                                   f"SIGTERM: {out / 'last.pt'} and results.json"), stderr
    assert _errors(stderr[1]) == [] and "stopped" not in stderr[1]


def _scoring_worker(rank: int, port: int, folder: Path) -> None:
    """One rank scoring a 25-row split (13 + 12 rows) with the same weights as one process."""
    from training.engine import evaluate

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dataset, model = _scoring_case()
    with processes.process_group("cpu"):
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
    torch.multiprocessing.start_processes(_scoring_worker, args=(free_ports(1)[0], tmp_path), nprocs=2,
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
