"""Runs that survive: checkpoints, kill-and-resume, interruption, eval-only, bad images.

All runs use a small copy of the embedded digits dataset (120 official train
and 60 official val/test images, with their own image folder) so the whole file
stays fast on two CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import parse_args
from errors import UserError
from losses import LOSSES, LossEntry
from main import main
from methods.base import SPMLLoss
from methods.cole import loss_an
from presets import REPO_ROOT
from training import checkpoint
from training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint


def flags(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-g", "cpu", "-l", "EM", "--patience", "0", "--data-dir", str(data), "--out", str(out), *extra]


def epochs_without_time(run_dir: Path) -> list[dict]:
    results = json.loads((run_dir / "results.json").read_text())
    return [{k: v for k, v in record.items() if k != "time_s"} for record in results["epochs"]]


def test_kill_and_resume_matches_uninterrupted_run(small_digits, tmp_path):
    epochs = "6"
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = subprocess.Popen([sys.executable, "main.py", *flags(small_digits, killed, "--epochs", epochs)],
                            cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / LAST).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-run: epoch 1 is checkpointed, the run has 5 more to go
    assert proc.wait() == -signal.SIGKILL
    assert json.loads((killed / "results.json").read_text())["status"] == "running"
    done_before = load_checkpoint(killed / LAST)["train_state"]["epoch"]
    assert 1 <= done_before < 6

    assert main(["--resume", str(killed), "-g", "cpu"]) == 0
    assert main(flags(small_digits, straight, "--epochs", epochs)) == 0
    resumed = epochs_without_time(killed)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == epochs_without_time(straight)
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]  # no epoch logged twice
    assert json.loads((killed / "results.json").read_text())["status"] == "completed"

    # a completed run is not resumed again; resuming refuses flags that would change the run
    assert main(["--resume", str(killed), "-g", "cpu"]) == 2
    with pytest.raises(UserError, match="drop --lr"):
        parse_args(["--resume", str(straight), "--lr", "0.1"])

    # --eval-only rescoring best.pt reproduces the best epoch's numbers
    assert main(["--eval-only", str(straight / BEST), "-g", "cpu"]) == 0
    scored = json.loads((straight / "eval_best.json").read_text())
    results = json.loads((straight / "results.json").read_text())
    assert scored["epoch"] == results["best_epoch"]
    assert scored["test"]["map"] == pytest.approx(results["test_map"], abs=1e-9)
    assert scored["val"]["map"] == pytest.approx(results["best_val_map"], abs=1e-9)


def test_sigterm_stops_the_run_as_ctrl_c(small_digits, tmp_path):
    """What Slurm and other batch systems send: results.json says interrupted and names the last checkpoint."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "main.py", *flags(small_digits, out, "--epochs", "50")], cwd=REPO_ROOT,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / LAST).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    results = json.loads((out / "results.json").read_text())
    done = results["last_completed_epoch"]
    assert results["status"] == "interrupted" and "SIGTERM" in results["reason"] and done >= 1
    assert results["last_checkpoint"] == str(out / LAST) and load_checkpoint(out / LAST)["train_state"]["epoch"] == done
    assert f"stopped during epoch {done + 1} by SIGTERM: {out / LAST} and results.json" in proc.stderr.read()


def test_atomic_checkpoint_write_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoint_loading_refuses_pickles_and_damage(tmp_path):
    torch.save({"version": checkpoint.FORMAT_VERSION, "model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="holds Python objects that are not loaded for safety") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value)  # never PyTorch's advice to unpickle it
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"x": torch.ones(1)})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or damaged PyTorch file; expected a run folder's last.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="is not a PyTorch file"):
        load_checkpoint(tmp_path / "noise.pt")
    with pytest.raises(UserError, match="is a folder, not a file"):
        load_checkpoint(tmp_path)
    torch.save({"version": 99}, tmp_path / "future.pt")
    with pytest.raises(UserError, match="format 1"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "weights.pt")
    with pytest.raises(UserError, match="not a spml checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")


class _FailsAtEpoch2(SPMLLoss):
    """`an`, until epoch 2 where the first step raises `error` (NaN loss or a Ctrl-C)."""

    def __init__(self, error: str):
        super().__init__()
        self.error, self.epoch = error, 0

    def start_epoch(self, epoch, score_train):
        self.epoch = epoch

    def forward(self, logits, targets, index):
        terms = loss_an(logits, targets)
        if self.epoch == 2 and self.error == "nan":
            return {"main": terms["main"] * float("nan")}
        if self.epoch == 2:
            raise KeyboardInterrupt
        return terms


@pytest.mark.parametrize("error, code, status", [("nan", 2, "diverged"), ("ctrl-c", 130, "interrupted")])
def test_interrupted_run_keeps_best_checkpoint_and_marks_results(small_digits, tmp_path, monkeypatch, capsys,
                                                                 error, code, status):
    monkeypatch.setitem(LOSSES, "fails", LossEntry(lambda hp, n, c: _FailsAtEpoch2(error), "observed", "test"))
    out = tmp_path / "run"
    assert main(["-g", "cpu", "-l", "fails", "--patience", "0", "--epochs", "3", "--data-dir", str(small_digits),
                 "--out", str(out)]) == code
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == status and results["last_completed_epoch"] == 1
    assert [r["epoch"] for r in results["epochs"]] == [1] and results["best_epoch"] == 1
    err = capsys.readouterr().err
    assert ("--resume" in err) == (status == "interrupted")  # resuming a diverged run would replay the NaN
    if error == "nan":
        assert "epoch 2, step 1" in results["reason"]
        assert "error: non-finite loss (nan) at epoch 2, step 1" in err
    assert load_checkpoint(out / BEST)["train_state"]["best_epoch"] == 1
    last = load_checkpoint(out / LAST)
    assert last["train_state"]["epoch"] == 1 and torch.isfinite(last["model"]["classifier.weight"]).all()


def test_unreadable_image_stops_or_is_skipped_and_counted(small_digits, tmp_path, capsys):
    from conftest import SMALL_TRAIN

    from datasets import SPLIT_SEED, VAL_FRAC, generate_split

    data = tmp_path / "data"
    shutil.copytree(small_digits, data)
    train_idx, _ = generate_split(SMALL_TRAIN, VAL_FRAC, SPLIT_SEED)
    bad = data / "images" / np.load(data / "formatted_train_images.npy")[train_idx[0]]
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG of the train split

    assert main(flags(data, tmp_path / "stops", "--epochs", "1")) == 2
    assert f"cannot read image {bad}" in capsys.readouterr().err
    stopped = json.loads((tmp_path / "stops" / "results.json").read_text())  # not left "running"
    assert stopped["status"] == "failed" and f"cannot read image {bad}" in stopped["reason"]
    assert main(flags(data, tmp_path / "skips", "--epochs", "2", "--skip-bad-images")) == 0
    results = json.loads((tmp_path / "skips" / "results.json").read_text())
    assert results["status"] == "completed" and results["skipped_images"] == 1
    assert [r["skipped_images"] for r in results["epochs"]] == [1, 1]


def test_same_seed_same_metrics(small_digits, tmp_path):
    for name in ("a", "b"):
        assert main(flags(small_digits, tmp_path / name, "--epochs", "1", "-s", "3")) == 0
    assert epochs_without_time(tmp_path / "a") == epochs_without_time(tmp_path / "b")


def test_resume_of_a_run_cut_before_its_first_epoch_starts_it_again(small_digits, tmp_path, monkeypatch, capsys):
    from training import trainer

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "fit", ctrl_c)
        assert main(flags(small_digits, out, "--epochs", "1")) == 130
    assert not list(out.glob("*.pt")) and (out / "config.json").is_file()
    (out / "notes.txt").write_text("the user's own file")
    assert main(["--resume", str(out), "-g", "cpu"]) == 2
    assert "holds files spml did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "config.json").is_file()  # refused before anything was removed
    (out / "notes.txt").unlink()
    assert main(["--resume", str(out), "-g", "cpu"]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    assert main(flags(small_digits, tmp_path / "straight", "--epochs", "1")) == 0
    assert epochs_without_time(out) == epochs_without_time(tmp_path / "straight")

    # a run whose checkpoints were deleted is not mistaken for one that never trained
    for checkpoint_file in out.glob("*.pt"):
        checkpoint_file.unlink()
    assert main(["--resume", str(out), "-g", "cpu"]) == 2
    assert "records finished epochs but no checkpoint is left" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["status"] == "completed"


def test_a_run_killed_between_epoch_1s_record_and_its_checkpoint_starts_again(small_digits, tmp_path, monkeypatch):
    from training import trainer

    def killed_before_saving(*args, **kwargs):  # epoch 1 logged (metrics.jsonl, results.json), no checkpoint yet
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_checkpoint", killed_before_saving)
        assert main(flags(small_digits, out, "--epochs", "2")) == 130
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not list(out.glob("*.pt"))
    assert main(["--resume", str(out), "-g", "cpu"]) == 0
    assert main(flags(small_digits, tmp_path / "straight", "--epochs", "2")) == 0
    assert epochs_without_time(out) == epochs_without_time(tmp_path / "straight")


def _train_orders(loader, epochs: int = 2) -> list[list[int]]:
    return [[i for batch in loader for i in batch[2].tolist()] for _ in range(epochs)]


@pytest.mark.parametrize("decode", ["pil", "gpu"])
def test_the_seed_sets_the_batch_order(small_digits, tmp_path, decode):
    """The same -s gives the same train order every run; another -s another order; each epoch re-draws it."""
    from modes.end_to_end import _splits_and_model
    from modes.setup import make_loaders

    def orders(seed: int) -> list[list[int]]:
        cfg = parse_args(["-g", "cpu", "-s", str(seed), "--decode", decode, "--data-dir", str(small_digits),
                          "--out", str(tmp_path / f"s{seed}")])
        splits, model = _splits_and_model(cfg)
        return _train_orders(make_loaders(cfg, splits, model)["train"])

    first = orders(0)
    assert sorted(first[0]) == list(range(96)) and first[0] != first[1]
    assert orders(0) == first and orders(1) != first


def test_the_seed_sets_the_batch_order_of_the_linear_modes():
    from modes.linear import FeatureDataset, _batches

    data = FeatureDataset(np.zeros((40, 3), np.float32), np.zeros((40, 2), np.float32))
    orders = lambda seed: _train_orders(_batches(data, 8, True, seed))  # noqa: E731
    first = orders(0)
    assert sorted(first[0]) == list(range(40)) and first[0] != first[1]
    assert orders(0) == first and orders(1) != first


def test_resume_and_eval_only_read_no_pretrained_weights(small_digits, tmp_path, monkeypatch):
    """Every weight comes from the checkpoint: the ImageNet file is not needed (offline) and not read."""
    import models
    from training import engine

    # digits_cnn as if it had ImageNet weights: the config asks for them, and the factory says when it is asked
    monkeypatch.setitem(models.BACKBONES, "digits_cnn", dataclasses.replace(models.BACKBONES["digits_cnn"],
                                                                           has_pretrained=True))
    real_backbone, asked = models.create_backbone, []
    monkeypatch.setattr(models, "create_backbone", lambda name, pretrained, *a: asked.append(pretrained)
                        or real_backbone(name, False, *a))
    real = engine.train_one_epoch

    def ctrl_c_at_epoch_2(*args, **kwargs):
        if args[5] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_one_epoch", ctrl_c_at_epoch_2)
        assert main(flags(small_digits, out, "--epochs", "2")) == 130
    assert main(["--resume", str(out), "-g", "cpu"]) == 0
    assert main(["--eval-only", str(out / BEST), "-g", "cpu"]) == 0
    assert asked == [True, False, False]
