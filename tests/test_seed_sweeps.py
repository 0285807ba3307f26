"""Seed sweeps: scripts/summarize.py over fake run folders, scripts/sweep_seeds.sh on digits."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import summarize  # scripts/, on pytest's pythonpath
from conftest import main_py_pids, slice_digits

from presets import REPO_ROOT


def fake_run(folder: Path, seed: int, test_map: float, val_map: float = 80.0, status: str = "completed", **config):
    folder.mkdir(parents=True)
    cfg = {"dataset": "pascal", "loss": "EM", "model": "resnet50", "seed": seed, "device": "cuda:0", "epochs": 10,
           "bsize": 8, "lr": 1e-5, "patience": 1, "num_workers": 8, "val_set_variant": "clean",
           "out": str(folder), "hyper": {"alpha": 0.2}, **config}
    results = {"config": cfg, "status": status, "best_epoch": 3, "best_val_map": val_map, "test_map": test_map,
               "image_size": 448, "epochs": []}
    (folder / "results.json").write_text(json.dumps(results))


def test_summary_mean_std_per_dataset_and_loss(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "seed1", 1, 88.0, 80.0)
    fake_run(sweep / "seed2", 2, 89.0, 81.0)
    fake_run(sweep / "seed3", 3, 90.5, 82.0)
    fake_run(sweep / "seed4", 4, 10.0, status="interrupted")  # not earned: left out
    fake_run(tmp_path / "an" / "seed1", 1, 85.0, loss="an")
    assert summarize.main([str(sweep), str(tmp_path / "an"), "--out", str(tmp_path / "table")]) == 0
    printed = capsys.readouterr()
    # EM: mean (88 + 89 + 90.5) / 3 = 89.1667; sample std sqrt((1.1667² + 0.1667² + 1.3333²) / 2) = 1.2583
    assert "| pascal | EM | - | 3 (1 2 3) | 89.17 ± 1.26 | 81.00 ± 1.00 | resnet50 | 448 | clean | patience 1, max 10 ep | - | - |" in printed.out
    assert "| pascal | an | - | 1 (1) | 85.00 (1 seed) |" in printed.out
    assert "left out" in printed.err and "seed4" in printed.err
    rows = list(csv.DictReader(open(tmp_path / "table" / "summary.csv")))
    assert [(r["loss"], r["n"], r["test_map_mean"], r["test_map_std"]) for r in rows] == [
        ("EM", "3", "89.1667", "1.2583"), ("an", "1", "85.0000", "nan")]
    assert (tmp_path / "table" / "summary.md").read_text().count("| pascal |") == 2


@pytest.mark.parametrize("change, field, shown", [
    ({"model": "vit"}, "model", '"vit"'),
    ({"val_set_variant": "observed"}, "val_set_variant", '"observed"'),
    ({"patience": 0}, "patience", "0"),
    ({"nus_variant": "cole"}, "nus_variant", '"cole"'),
    ({"lr": 1e-4}, "lr", "0.0001"),
    ({"hyper": {"alpha": 0.5}}, "hyper.alpha", "0.5"),  # the loss setting that differs, not the whole dict
])
def test_summary_keeps_different_protocols_apart(tmp_path, capsys, change, field, shown):
    """Runs of one dataset x loss under two protocols: one row each, naming what differs; never pooled."""
    fake_run(tmp_path / "seed1", 1, 88.0)
    fake_run(tmp_path / "seed2", 2, 89.0)
    fake_run(tmp_path / "other" / "seed1", 1, 70.0, **change)
    assert summarize.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| pascal | EM |")]
    assert len(rows) == 2
    assert any("2 (1 2) | 88.50 ± 0.71" in row for row in rows)
    assert any(f"{field}={shown}" in row and "1 (1) | 70.00 (1 seed)" in row for row in rows)


def test_summary_pools_a_run_older_than_a_setting_with_runs_at_its_default(tmp_path, capsys):
    fake_run(tmp_path / "old" / "seed1", 1, 88.0)  # written before --sync-bn existed
    fake_run(tmp_path / "new" / "seed2", 2, 89.0, sync_bn=False)
    fake_run(tmp_path / "other" / "seed3", 3, 70.0, sync_bn=True)
    assert summarize.main([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pascal | EM |")]
    assert len(rows) == 2 and any("2 (1 2) | 88.50" in row for row in rows)


def test_summary_never_pools_label_protocols(tmp_path, capsys):
    """Single-positive and known-ratio (PU-MLC) runs: one row each, even with the rest of the config equal."""
    fake_run(tmp_path / "sp" / "seed1", 1, 88.0)
    fake_run(tmp_path / "kr" / "seed2", 2, 70.0)
    for folder, recorded in (("sp/seed1", {"protocol": "single_positive", "num_pos": 1, "num_neg": 0, "seed": 1200}),
                             ("kr/seed2", {"protocol": "known_ratio", "known_ratio": 0.1, "seed": 0})):
        path = tmp_path / folder / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "label_protocol": recorded}))
    assert summarize.main([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pascal | EM |")]
    assert len(rows) == 2
    assert any(row.endswith("| single positive |") and "88.00" in row for row in rows)
    assert any(row.endswith("| known ratio 0.1 |") and "70.00" in row for row in rows)


def test_summary_refuses_a_repeated_seed_naming_both_folders(tmp_path, capsys):
    fake_run(tmp_path / "a", 1, 88.0)
    fake_run(tmp_path / "b", 1, 89.0)
    assert summarize.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "seed 1 appears twice" in err and str(tmp_path / "a") in err and str(tmp_path / "b") in err


def test_sweep_script_on_digits_two_seeds(digits_master, tmp_path):
    out = tmp_path / "sweep"
    data = slice_digits(digits_master, tmp_path / "digits", 160, 160, copy_images=False)
    images = data / "images"
    script = REPO_ROOT / "scripts" / "sweep_seeds.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    args = [str(script), str(out), "1 2", "-g", "cpu", "-l", "EM", "--epochs", "1",
            "--data-dir", str(data), "--image-root", str(images)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seeds = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in (1, 2)]
    assert [r["config"]["seed"] for r in seeds] == [1, 2] and all(r["status"] == "completed" for r in seeds)
    assert seeds[0]["test_map"] != seeds[1]["test_map"]  # really two seeds
    assert "| digits | EM | - | 2 (1 2) |" in done.stdout  # the table, at the end

    # seed 2 as if killed before its first epoch ended: the sweep's rerun starts it again in place
    for name in ("last.pt", "best.pt", "metrics.jsonl", "results.json"):
        (out / "seed2" / name).unlink()
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stderr.count("already completed") == 1, again.stderr[-2000:]
    assert "killed before its first checkpoint was written; starting it again" in (out / "logs" / "seed2.log").read_text()
    assert json.loads((out / "seed2" / "results.json").read_text())["test_map"] == seeds[1]["test_map"]


def test_a_sweep_refused_leaves_nothing_behind(tmp_path, capsys):
    """The sweep is the grid: what it refuses, it refuses in one line, before writing anything."""
    from scripts.grid.launch import main as grid

    out = tmp_path / "sweep"
    assert grid(["--out", str(out), "--seeds", "1", "2", "--", "-g", "cpu", "-s", "3"]) == 2
    assert "main.py flag --seed given after --: give the seeds with --seeds" in capsys.readouterr().err
    assert grid(["--out", str(out), "--seeds", "1", "2", "--", "-g", "cpu", "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "error: argument --epochs: must be > 0, got 0\n"
    assert not out.exists()  # no empty folder left behind (other settings in a sweep's folder: tests/test_grid.py)


def test_sweep_stops_whole_on_ctrl_c(digits_master, tmp_path):
    data = slice_digits(digits_master, tmp_path / "digits", 160, 160, copy_images=False)
    script = REPO_ROOT / "scripts" / "sweep_seeds.sh"
    env = {**os.environ, "PYTHON": sys.executable, "JOBS": "2"}  # both seeds at once: both are stopped
    out = tmp_path / "sweep"
    args = [str(script), str(out), "1 2 3", "-g", "cpu", "-l", "EM", "--epochs", "20", "--patience", "0",
            "--data-dir", str(data)]
    # Ctrl-C in a terminal reaches the whole foreground process group: here the grid, which passes it on
    # SIG_DFL: a test runner started in the background (`cmd &` in a script) passes SIGINT on as ignored
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not all((out / f"seed{s}" / "train.log").exists() for s in (1, 2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: stopping 2 running run(s)" in err
    assert not (out / "seed3").exists()  # the next seed never started
    for seed in (1, 2):
        assert json.loads((out / f"seed{seed}" / "results.json").read_text())["status"] == "interrupted"
        assert f"interrupted seed{seed}: interrupted by the user (Ctrl-C)" in err
        assert main_py_pids(out / f"seed{seed}") == []  # nothing left running
