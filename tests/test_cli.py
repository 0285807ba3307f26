"""The CLI end to end through `main([...])`, and every bad input of the issue: one line, exit 2, nothing written."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cli import parse_args
from main import main
from presets import REPO_ROOT
from training.engine import TrainState

FAST = ["-g", "cpu", "--num-workers", "0"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_end_to_end_on_digits(small_digits, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "-d", "digits", "-l", "EM", "--data-dir", str(small_digits), "--epochs", "2",
                        "--bsize", "8", "--patience", "0", "--out", str(out), *FAST)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert [e["epoch"] for e in results["epochs"]] == [1, 2]
    best = max(results["epochs"], key=lambda e: e["val_map"])
    assert results["best_epoch"] == best["epoch"]
    assert results["best_val_map"] == best["val_map"] and results["test_map"] == best["test_map"]
    assert 30 < results["test_map"] <= 100  # it learned something after two epochs
    assert results["config"]["loss"] == "EM" and results["config"]["lr"] == 1e-3  # the digits preset
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert {"prec_at_1", "rec_at_3", "top_5", "cf1", "of1", "num_empty_classes"} <= set(results["epochs"][0]["test"])
    assert "best epoch" in err
    # what rounds the float sums is recorded: runs made with another thread count or torch differ a digit
    assert (results["cpu_threads"], results["torch_version"]) == (torch.get_num_threads(), torch.__version__)
    # a second run into the same folder is refused, the first one's files untouched
    before = (out / "results.json").read_bytes()
    code, err = run_cli(capsys, "--data-dir", str(small_digits), "--out", str(out), *FAST)
    assert code == 2 and "already exists" in err
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("patience, val_maps, stops_after", [
    (1, [50, 60, 55, 70], 3),  # the EM code's rule: stop at the first epoch without a gain
    (2, [50, 60, 55, 70, 65, 64], 6),  # a gain resets the count
    (0, [50, 40, 30, 20], None),  # never stop early (Cole, VLPL)
])
def test_patience_rule(patience, val_maps, stops_after):
    state, model = TrainState(), torch.nn.Linear(1, 1)
    stopped = None
    for epoch, val_map in enumerate(val_maps, start=1):
        state.update(epoch, val_map, val_map - 1, model)
        if state.should_stop(patience):
            stopped = epoch
            break
    assert stopped == stops_after
    best = max(val_maps[: stopped or len(val_maps)])
    assert state.best_val_map == best and state.best_test_map == best - 1


def test_flags_override_presets(tmp_path):
    cfg = parse_args(["-d", "coco", "-g", "cpu", "--out", str(tmp_path)])
    assert (cfg.bsize, cfg.lr, cfg.hyper.alpha, cfg.model) == (16, 1e-5, 0.1, "resnet50")
    cfg = parse_args(["-d", "coco", "-g", "cpu", "--bsize", "4", "--alpha", "0.3", "--out", str(tmp_path)])
    assert (cfg.bsize, cfg.hyper.alpha) == (4, 0.3)


def test_saved_paths_survive_a_change_of_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "t.npy").write_bytes(b"")
    cfg = parse_args(["-g", "cpu", "--data-dir", "data/mine", "--out", "runs/a", "--text-features", "t.npy"])
    saved = cfg.to_dict()
    assert saved["data_dir"] == str(tmp_path / "data" / "mine")
    assert saved["image_root"] == str(tmp_path / "data" / "mine" / "images")
    assert (saved["out"], saved["text_features"]) == (str(tmp_path / "runs" / "a"), str(tmp_path / "t.npy"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # what --resume and --eval-only rebuild from config.json
    assert type(cfg).from_dict(saved, tmp_path / "config.json") == cfg


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["-d", "imagenet"], "-d imagenet is not one of the benchmarks (coco, cub, digits, nuswide, pascal, voc2007); "
                         "for a dataset of your own pass its folder with --data-dir"),
    (["-l", "softmax"], "invalid choice: 'softmax' (choose from"),
    (["--epochs", "0"], "must be > 0"),
    (["--lr", "-0.1"], "must be > 0"),
    (["--bsize", "0"], "must be > 0"),
    (["-g", "gpu0"], "-g/--gpu"),
])
def test_bad_flags(argv, expected, tmp_path, capsys):
    code, err = run_cli(capsys, *argv, "--out", str(tmp_path / "run"))
    assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "run").exists()


def corrupt(digits_dir, name, array):
    np.save(digits_dir / name, array)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "formatted_train_labels_obs.npy").unlink(), "preproc.generate_observed_labels"),
    (lambda d: corrupt(d, "formatted_train_labels.npy", np.zeros((5, 10))), "expected (4000, C)"),
    (lambda d: corrupt(d, "formatted_val_labels_obs.npy", np.full((1000, 10), 2.0)), "allowed values are [-1, 0, 1]"),
    (lambda d: corrupt(d, "formatted_train_labels.npy", np.full((4000, 10), -1.0)), "allowed values are [0, 1]"),
    (lambda d: corrupt(d, "formatted_train_labels_obs.npy", np.zeros((4000, 9))), "has shape (4000, 10)"),
])
def test_bad_dataset_files(digits_dir, damage, expected, tmp_path, capsys):
    damage(digits_dir)
    code, err = run_cli(capsys, "--data-dir", str(digits_dir), "--out", str(tmp_path / "run"), *FAST)
    assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_missing_images_are_counted(digits_dir, tmp_path, capsys):
    images = digits_dir / "images"
    real = images.resolve()
    images.unlink()
    shutil.copytree(real, images)
    for name in ("train/000003.png", "test/000010.png", "test/000011.png"):
        (images / name).unlink()
    code, err = run_cli(capsys, "--data-dir", str(digits_dir), "--out", str(tmp_path / "run"), *FAST)
    line = one_error_line(err)
    assert code == 2 and "1 of 4000 images listed in" in line and "000003.png" in line


def test_missing_data_folder(tmp_path, capsys):
    code, err = run_cli(capsys, "-d", "coco", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *FAST)
    line = one_error_line(err)
    assert code == 2 and "does not exist" in line and "data/coco/README.md" in line


def test_the_help_imports_no_torch():
    """`import torch` alone takes 2 s or more on a small CPU (benchmarks/startup_time.py): `main.py -h` reads
    only the flags' tables (losses.py, nets/__init__.py, config.py), whose builders are imported when used."""
    probe = ("import sys, main; code = main.main(['-h']); "
             "print(code, sorted(m for m in ('torch', 'numpy', 'PIL', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "--loss" in out.stdout and out.stdout.splitlines()[-1] == "0 []"


def test_the_backbones_import_no_torchvision_until_they_build():
    """`import torchvision` pulls in torch._dynamo (seconds): a run on digits never needs it."""
    probe = ("import sys, models; models.create_backbone('digits_cnn', False); "
             "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
