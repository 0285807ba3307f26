"""The grid launcher (python -m scripts.grid) here: the grid it expands, the input it refuses before
anything starts, N runs at a time, a killed run resumed, a failed run reported while the others finish."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import main_py_pids, slice_digits

from scripts.grid.launch import _spec, build_parser, gpu_slots, main
from scripts.grid.slurm import array_spec
from scripts.grid.spec import Spec, run_configs, write_record


def test_the_grid_expands_into_named_runs_from_flags_or_a_file(tmp_path):
    spec = Spec(("digits", "pascal"), ("an", "EM"), (0, 1), ("--epochs", "1"))
    runs = spec.runs()
    assert [run.name for run in runs] == [f"{d}_{loss}_seed{s}" for d in ("digits", "pascal") for loss in ("an", "EM")
                                          for s in (0, 1)]
    assert runs[6].argv == ("--epochs", "1", "-d", "pascal", "-l", "EM", "-s", "0")
    assert [run.index for run in runs] == list(range(8))
    # a grid of seeds alone: the layout of scripts/sweep_seeds.sh
    assert [(run.name, run.argv) for run in Spec(None, None, (1, 2), ("-l", "EM")).runs()] == [
        ("seed1", ("-l", "EM", "-s", "1")), ("seed2", ("-l", "EM", "-s", "2"))]

    toml = tmp_path / "grid.toml"
    toml.write_text('datasets = ["digits", "pascal"]\nlosses = ["an", "EM"]\nseeds = [0, 1]\nflags = "--epochs 1"\n')
    js = tmp_path / "grid.json"
    js.write_text(json.dumps({"datasets": ["digits", "pascal"], "losses": ["an", "EM"], "seeds": [0, 1],
                              "flags": ["--epochs", "1"]}))
    for path in (toml, js):
        assert _spec(build_parser().parse_args(["--out", "x", "--file", str(path)]), [], tmp_path) == spec
    given = build_parser().parse_args(["--out", "x", "--datasets", "digits", "pascal", "--losses", "an", "EM",
                                       "--seeds", "0", "1"])
    assert _spec(given, ["--epochs", "1"], tmp_path) == spec
    assert _spec(build_parser().parse_args(["--out", "x"]), [], tmp_path).seeds == (0,)  # main.py's default seed


def _grid_folder(out: Path, losses: tuple[str, ...]) -> None:
    """A grid folder as a launch leaves it (its grid.json), without training anything."""
    spec = Spec(None, losses, (0,), ("--epochs", "1"))
    out.mkdir()
    write_record(out, spec, spec.runs(), run_configs(spec.runs(), "cpu"), {})


@pytest.mark.parametrize("argv, message", [
    (["--losses", "an", "nope"], "unknown loss 'nope' given to --losses; choose from "),
    (["--datasets", "digits", "nope"], "run nope_seed0: -d nope is not one of the benchmarks"),
    (["--gpus", "0"], "--gpus 0: torch sees no CUDA GPU on this machine; run on the CPU with --jobs N"),
    (["--slurm"], "--slurm: no sbatch on this machine"),
    (["--", "-s", "3"], "main.py flag --seed given after --: give the seeds with --seeds"),
    (["--losses", "an", "--", "-l", "EM"], "main.py flag --loss given after --: give the losses with --losses only"),
    (["--", "--epochs", "0"], "argument --epochs: must be > 0, got 0"),
    (["--partition", "gpu"], "--partition is a Slurm option: add --slurm, or drop it"),
    (["--gpus", "0", "--jobs", "2"], "--gpus runs one run per GPU here: drop --jobs"),
])
def test_bad_input_is_one_line_before_anything_starts(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever this machine has
    out = tmp_path / "grid"
    assert main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_gpu_that_does_not_exist_is_refused_and_slots_follow_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # this process sees 3 of the machine's GPUs
    assert gpu_slots("2,0") == ["6", "4"]
    with pytest.raises(Exception, match=r"--gpus 0,3: there is no GPU 3; 3 visible \(0-2\)"):
        gpu_slots("0,3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_slots("1") == ["1"]


def test_a_folder_holding_another_grid_is_refused_unless_resumed(tmp_path, capsys):
    out = tmp_path / "grid"
    _grid_folder(out, ("an", "EM"))
    cases = [
        (["--losses", "an", "--", "--epochs", "1"],
         "holds another grid (its losses are an EM (here: an)): its runs EM_seed0 are not in this one"),
        (["--losses", "an", "EM", "--", "--epochs", "2"], 'run an_seed0 differs (epochs 1 there, 2 here;'),
        (["--resume", "--losses", "an"], "--resume goes on with the grid in"),
    ]
    for argv, message in cases:
        assert main(["--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in out.iterdir()) == ["grid.json"]  # nothing started
    assert main(["--out", str(out), "--resume", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("main.py") == 2  # the grid it holds: both runs


def test_a_sweep_folder_without_grid_json_refuses_other_settings(tmp_path, capsys):
    """A folder an older sweep_seeds.sh made (run folders, no grid.json): a run of other settings is refused."""
    from cli import parse_args

    out = tmp_path / "sweep"
    config = parse_args(["-l", "EM", "-s", "0", "--epochs", "1", "-g", "cpu", "--out", str(out / "seed0")]).to_dict()
    (out / "seed0").mkdir(parents=True)
    (out / "seed0" / "config.json").write_text(json.dumps(config))
    assert main(["--out", str(out), "--seeds", "0", "--", "-l", "an", "--epochs", "1"]) == 2
    assert 'was trained with other settings (loss "EM" there, "an" here)' in capsys.readouterr().err
    assert main(["--out", str(out), "--seeds", "0", "1", "--dry-run", "--", "-l", "EM", "--epochs", "1"]) == 0
    planned = capsys.readouterr().out.splitlines()  # the same settings: the run there is resumed, seed 1 started
    assert len(planned) == 2 and f"--resume {out / 'seed0'}" in planned[0] and "-s 1" in planned[1]


def test_slurm_dry_run_prints_the_job_array_script(tmp_path, capsys):
    assert array_spec([0, 1, 2, 5, 7, 8], 2) == "0-2,5,7-8%2" and array_spec([3], None) == "3"
    out = tmp_path / "grid"
    argv = ["--out", str(out), "--losses", "an", "EM", "--seeds", "0", "1", "--slurm", "--dry-run", "--jobs", "3",
            "--partition", "gpu", "--time", "2:00:00", "--gres", "gpu:1", "--cpus-per-task", "4",
            "--sbatch=--account=abc", "--", "--epochs", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        f"#SBATCH --job-name=spml-grid", "#SBATCH --array=0-3%3", f"#SBATCH --output={out}/logs/slurm-%A_%a.out",
        "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=4",
        "#SBATCH --account=abc"]
    assert "export OMP_NUM_THREADS=4" in lines  # the cores Slurm gives each run
    assert lines[-1].endswith(f'-m scripts.grid --out {out} --run-task "$SLURM_ARRAY_TASK_ID" --task-gpu 0')
    assert not out.exists()


def _wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_runs_n_at_once_a_failed_run_leaves_the_others_a_killed_run_resumes(digits_master, tmp_path, capsys):
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    out = tmp_path / "grid"
    grid = ["--out", str(out), "--seeds", "0", "1", "2", "--jobs", "2"]
    flags = ["--", "-l", "EM", "--epochs", "6", "--patience", "0", "--data-dir", str(data)]

    def ended(seed: int) -> bool:
        try:
            return "ended" in json.loads((out / "logs" / f"seed{seed}.attempt.json").read_text())
        except (OSError, ValueError):
            return False

    def sabotage() -> None:
        # Seeds 0 and 1 are each held (SIGSTOP) as soon as they train; a folder is put in the way of seed 1's first
        # checkpoint and seed 1 goes on alone, to fail there; seed 0 goes on once seed 1 has failed: the failure
        # comes while seed 0 trains, whatever the two processes' start times.
        held: dict[int, list[int]] = {}
        try:
            def hold_started() -> bool:
                for seed in {0, 1} - set(held):
                    if (out / f"seed{seed}" / "train.log").exists():
                        held[seed] = main_py_pids(out / f"seed{seed}")
                        for pid in held[seed]:
                            os.kill(pid, signal.SIGSTOP)
                return len(held) == 2

            _wait_for(hold_started, "seeds 0 and 1 to start")
            assert not (out / "seed1" / "last.pt").exists(), "seed 1 ended its first epoch before it was held"
            (out / "seed1" / "last.pt").mkdir()
            (out / "seed1" / "last.pt" / "in_the_way").touch()
            for pid in held.pop(1):
                os.kill(pid, signal.SIGCONT)
            _wait_for(lambda: ended(1), "seed 1 to fail")
        finally:  # never leave a run stopped: the grid would wait for it forever
            for pid in sum(held.values(), []):
                os.kill(pid, signal.SIGCONT)
        # seed 2, started in seed 1's slot, is killed hard after its first checkpoint (before it, no epoch is
        # resumable)
        _wait_for(lambda: (out / "seed2" / "last.pt").exists(), "seed 2's first checkpoint")
        for pid in main_py_pids(out / "seed2"):
            os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=sabotage, daemon=True)
    watcher.start()
    assert main([*grid, *flags]) == 1
    watcher.join(timeout=1)
    attempts = [json.loads((out / "logs" / f"seed{s}.attempt.json").read_text()) for s in range(3)]
    spans = [(a["started"], a["ended"]) for a in attempts]
    assert max(sum(start <= t < end for start, end in spans) for t, _ in spans) == 2  # two at a time, never three
    err = capsys.readouterr().err
    assert "grid " + str(out) + ": 3 runs: 1 completed, 1 failed, 1 interrupted" in err
    assert "failed seed1: IsADirectoryError: " in err
    assert "interrupted seed2: killed (SIGKILL: killed hard, or out of memory) after" in err
    assert json.loads((out / "seed0" / "results.json").read_text())["status"] == "completed"

    shutil.rmtree(out / "seed1")  # what failed is cleared away; the same command again resumes seed 2 only
    assert main([*grid, "--dry-run", *flags]) == 0
    printed = capsys.readouterr()
    planned = printed.out.splitlines()
    assert len(planned) == 1 and planned[0].endswith(f"main.py --resume {out / 'seed2'} -g cpu")
    assert "seed0: already completed, skipped" in printed.err
    assert "seed1: failed earlier (IsADirectoryError: " in printed.err

    assert main([*grid, "--retry-failed", *flags]) == 0  # and seed 1 too
    printed = capsys.readouterr()
    assert "| digits | EM | - | 3 (0 1 2) |" in printed.out
    resumed = json.loads((out / "seed2" / "results.json").read_text())
    assert resumed["status"] == "completed" and [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert "resuming " in (out / "seed2" / "train.log").read_text()
    attempts = [json.loads((out / "logs" / f"seed{s}.attempt.json").read_text())["attempt"] for s in range(3)]
    assert attempts == [1, 2, 2]  # seed 0 never ran twice
