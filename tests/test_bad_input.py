"""Bad input and interruptions as a new user meets them: one line saying what is wrong and how to
fix it, exit code 2, and nothing written; or, when a run is cut, the truth about what was kept."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cli import parse_args
from conftest import slice_digits
from errors import UserError
from fileio import load_npy
from main import main
from presets import DATA_ROOT

FAST = ["-g", "cpu", "--num-workers", "0"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one error line of a refused run (info lines before it are allowed), and no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def refused(capsys, tmp_path, *argv) -> str:
    out = tmp_path / "refused"
    code, err = run_cli(capsys, *argv, "--out", out, *FAST)
    assert code == 2, err
    assert not out.exists()  # nothing written
    return error_line(err)


@pytest.mark.parametrize("flag, value, expected", [
    ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
    ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
    ("--alpha", "nan", "argument --alpha: must be a finite number"),
    ("--alpha", "-1", "argument --alpha: must be >= 0, got -1"),
    ("--threshold", "1", "argument --threshold: must be in (0, 1), got 1"),
    ("--ls-coef", "1.5", "argument --ls-coef: must be in [0, 1), got 1.5"),
    ("-s", "-1", "argument -s/--seed: must be in [0, 4.29497e+09], got -1"),
    ("--expected-pos", "inf", "argument --expected-pos: must be a finite number"),
    ("--search-lrs", "nan", "argument --search-lrs: must be a finite number"),
])
def test_numeric_flags_finite_and_in_range(flag, value, expected, capsys, tmp_path):
    assert expected in refused(capsys, tmp_path, flag, value)


def test_missing_files_named_by_flags(capsys, tmp_path, small_digits):
    data = ["--data-dir", small_digits]
    assert "--clip-weights /nope does not exist; pass an open_clip checkpoint file" in refused(
        capsys, tmp_path, *data, "-l", "EM_PL", "--clip-weights", "/nope")
    assert f"--clip-model {tmp_path}/missing.json does not exist" in refused(
        capsys, tmp_path, *data, "-l", "EM_PL", "--clip-model", tmp_path / "missing.json")
    assert "--pretrained-weights /nope does not exist" in refused(capsys, tmp_path, *data, "--pretrained-weights", "/nope")
    assert "--text-features" in refused(capsys, tmp_path, *data, "--text-features", tmp_path)  # a folder


def test_data_dir_that_is_a_file_or_a_typo(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert f"--data-dir {tmp_path}/file is a file, not a folder" in refused(capsys, tmp_path, "--data-dir", tmp_path / "file")
    # digits is built only at its default place: a typo is an error, not a new dataset trained for 10 epochs
    line = refused(capsys, tmp_path, "-d", "digits", "--data-dir", tmp_path / "some" / "typo")
    assert "does not exist" in line and not (tmp_path / "some").exists()


def test_out_under_a_file_or_unwritable(capsys, tmp_path, small_digits, monkeypatch):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "--data-dir", small_digits, "--out", tmp_path / "file" / "run", *FAST)
    assert code == 2 and "is a file, so no folder can be made under it" in error_line(err)
    code, err = run_cli(capsys, "--data-dir", small_digits, "--out", tmp_path / "file", *FAST)
    assert code == 2 and "--out" in error_line(err)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode))
    code, err = run_cli(capsys, "--data-dir", small_digits, "--out", tmp_path / "new", *FAST)
    assert code == 2 and "cannot write in" in error_line(err) and not (tmp_path / "new").exists()


@pytest.mark.parametrize("split, expected", [("val", "the test set would be empty"),
                                             ("train", "the train and val sets would be empty")])
def test_empty_split(capsys, tmp_path, digits_master, split, expected):
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    for kind in ("images", "labels", "labels_obs"):
        array = np.load(data / f"formatted_{split}_{kind}.npy")
        np.save(data / f"formatted_{split}_{kind}.npy", array[:0])
    assert expected in refused(capsys, tmp_path, "--data-dir", data)


def test_garbage_weights_and_checkpoints(capsys, tmp_path, small_digits):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    line = refused(capsys, tmp_path, "--data-dir", small_digits, "--pretrained-weights", garbage)
    assert f"--pretrained-weights {garbage} is not a PyTorch file" in line and "file an issue" not in line
    code, err = run_cli(capsys, "--eval-only", garbage, "-g", "cpu")
    assert code == 2 and "is not a PyTorch file; expected a run folder's last.pt or best.pt" in error_line(err)
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "weights.pt")
    code, err = run_cli(capsys, "--eval-only", tmp_path / "weights.pt", "-g", "cpu")
    assert code == 2 and "is not a spml checkpoint" in error_line(err) and "weights_only" not in err
    code, err = run_cli(capsys, "--eval-only", tmp_path, "-g", "cpu")
    assert code == 2 and "is a folder, not a file" in error_line(err)


def test_npy_of_random_bytes_is_reported_as_what_it_is(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(os.urandom(512))
    with pytest.raises(Exception, match="is not a NumPy .npy file"):
        load_npy(path, "recreate it")


def test_ctrl_c_during_epoch_1_says_the_truth_and_writes_strict_json(capsys, tmp_path, small_digits, monkeypatch):
    from training import engine

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_one_epoch", ctrl_c)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "--data-dir", small_digits, "-l", "EM", "--out", out, *FAST)
    assert code == 130
    assert "no epoch completed, no checkpoint written" in err and "last.pt" not in err
    assert not (out / "last.pt").exists()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    results = json.loads((out / "results.json").read_text(), parse_constant=refuse)  # no NaN, no -Infinity
    assert results["status"] == "interrupted" and results["best_val_map"] is None


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_short_trial_runs_of_the_default_loss(capsys, tmp_path, small_digits, epochs):
    code, err = run_cli(capsys, "--data-dir", small_digits, "--epochs", epochs, "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    assert f"warm-up is shortened from 2 to {int(epochs) - 1} epoch(s)" in err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"] == "EM_APL" and config["hyper"]["warmup_epochs"] == int(epochs) - 1
    # one readable summary line, not the config dict
    assert "loss EM_APL, model digits_cnn, device cpu" in err and "'hyper'" not in err


def test_gpu_index_falls_back_only_without_cuda_and_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = parse_args(["-g", "5", "--out", str(tmp_path / "a")])
    assert cfg.device == "cpu" and "no CUDA device; running on the CPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, err = run_cli(capsys, "-g", "5", "--out", tmp_path / "b")
    assert code == 2 and "-g/--gpu 5: only 1 GPU(s) visible" in error_line(err)


def test_a_dataset_of_your_own_runs_as_itself(capsys, tmp_path, digits_master):
    data = slice_digits(digits_master, tmp_path / "mine", 120, 60, copy_images=False)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "-d", "mine", "--data-dir", data, "--image-root", data / "images", "-l", "EM",
                        "-m", "digits_cnn", "--epochs", "1", "--out", out, *FAST)
    assert code == 0, err
    assert "mine: a dataset of your own, with neutral defaults: batch 16, lr 0.0001" in err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "mine" and "pascal" not in json.dumps(results)
    code, err = run_cli(capsys, "-d", "mine", "--data-dir", data, "-l", "epr", "--out", tmp_path / "r2", *FAST)
    assert code == 2 and "needs --expected-pos on a dataset of your own" in error_line(err)
    assert "'mine!'" in refused(capsys, tmp_path, "-d", "mine!", "--data-dir", data)


def test_errors_say_how_to_prepare_the_dataset_they_name(capsys, tmp_path, digits_master):
    """Each points at what exists: the format command of digits, a benchmark's data/<name>/README.md, or the
    README's section for a dataset of one's own (never a data/<name>/README.md that is not there)."""
    mine = slice_digits(digits_master, tmp_path / "mine", 40, 20, copy_images=False)
    (mine / "formatted_train_labels_obs.npy").unlink()
    line = refused(capsys, tmp_path, "-d", "mine", "--data-dir", mine, "--image-root", mine / "images")
    assert f"python -m preproc.generate_observed_labels --dataset mine --data-dir {mine}" in line and "README.md" not in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(capsys, tmp_path, "-d", "digits", "--data-dir", empty)
    assert f"python -m preproc.format_digits --save-path {empty}" in line and "README.md" not in line
    line = refused(capsys, tmp_path, "-d", "mine", "--data-dir", empty)
    assert "A dataset of your own" in line and "data/mine/README.md" not in line
    assert "see data/coco/README.md to download and format it" in refused(capsys, tmp_path, "-d", "coco", "--data-dir", empty)


def test_an_image_list_saved_as_bytes_is_read_as_utf8_text(capsys, tmp_path, digits_master):
    data = slice_digits(digits_master, tmp_path / "bytes", 40, 20, copy_images=False)
    for split in ("train", "val"):
        path = data / f"formatted_{split}_images.npy"
        np.save(path, np.load(path).astype("S"))
    code, err = run_cli(capsys, "--data-dir", data, "--epochs", "1", "-l", "an", "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    np.save(data / "formatted_train_images.npy", np.array([b"train/\xff.png"] * 40))
    assert "holds byte strings that are not UTF-8" in refused(capsys, tmp_path, "--data-dir", data)


def test_loader_workers_default_to_at_most_the_cores_available(tmp_path, digits_master, monkeypatch, caplog):
    import cli

    data = slice_digits(digits_master, tmp_path / "mine", 40, 20, copy_images=False)
    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    with caplog.at_level("INFO"):
        mine = parse_args(["-d", "mine", "--data-dir", str(data), "-g", "cpu", "--out", str(tmp_path / "a")])
    assert mine.num_workers == 2 and "2 loader workers" in caplog.text  # the neutral default is 8
    assert parse_args(["-d", "coco", "--data-dir", str(data), "-g", "cpu", "--out", str(tmp_path / "b")]).num_workers == 2
    assert parse_args(["-d", "mine", "--data-dir", str(data), "-g", "cpu", "--num-workers", "6",
                       "--out", str(tmp_path / "c")]).num_workers == 6  # a flag wins
    monkeypatch.setattr(cli, "available_cores", lambda: 16)
    assert parse_args(["-d", "coco", "--data-dir", str(data), "-g", "cpu", "--out", str(tmp_path / "d")]).num_workers == 8


def test_default_digits_folder_is_the_only_one_built(tmp_path):
    cfg = parse_args(["-g", "cpu", "--out", str(tmp_path / "run")])
    assert cfg.data_dir == DATA_ROOT / "digits"


def test_progress_lines_without_a_terminal(capsys, tmp_path, small_digits, monkeypatch):
    """A batch job's log (no terminal, no progress bar) still shows training and evaluation moving: step,
    images/s and the loss once read, at the time interval whatever the step time or the loss reads."""
    from training import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)  # every step is a minute late
    monkeypatch.setattr(engine, "SYNC_EVERY", 5)
    code, err = run_cli(capsys, "--data-dir", small_digits, "-l", "EM", "--bsize", "8", "--epochs", "1",
                        "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    lines = [line for line in err.splitlines() if " images/s" in line]
    assert [line.split(":")[0] for line in lines if line.startswith("epoch 1")] == \
        [f"epoch 1 step {step}/12" for step in range(1, 13)]
    assert lines[3].endswith("images/s") and "images/s, loss" in lines[4]  # losses read after step 5
    assert "val step 3/3:" in err and "test step 8/8:" in err  # 24 val and 60 test images, batch 8


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError(f"cannot read image {index}.png: broken (re-extract it)")


def test_an_error_met_in_a_loader_worker_is_its_own_line():
    """PyTorch re-raises a worker's exception with the worker's whole traceback as its message."""
    with pytest.raises(UserError) as caught:
        next(iter(torch.utils.data.DataLoader(_Unreadable(), num_workers=1)))
    assert str(caught.value) == "cannot read image 0.png: broken (re-extract it)"
