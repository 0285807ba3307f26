"""Training modes (linear on cached features, linear_init), feature extraction and --search,
end to end through `main([...])` on a tiny dataset folder built here (24x24 PNGs, 3 classes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import parse_args
from errors import UserError
from main import main
from preproc.extract_features import extract_features

NUM_TRAIN, NUM_TEST, C = 30, 10, 3
FAST = ["-d", "digits", "-g", "cpu", "--num-workers", "0", "--bsize", "8"]


def _write_split(root: Path, split: str, count: int, rng: np.random.RandomState, images: bool) -> None:
    full = (rng.rand(count, C) < 0.4).astype(np.float32)
    full[np.arange(count), rng.randint(0, C, count)] = 1  # >= 1 positive per row
    obs = np.zeros_like(full)
    for row in range(count):
        obs[row, rng.choice(np.flatnonzero(full[row]))] = 1
    names = np.array([f"{split}/{i:03d}.png" for i in range(count)])
    np.save(root / f"formatted_{split}_images.npy", names)
    np.save(root / f"formatted_{split}_labels.npy", full)
    np.save(root / f"formatted_{split}_labels_obs.npy", obs)
    if images:
        (root / "images" / split).mkdir(parents=True)
        for i, name in enumerate(names):
            pixels = (rng.rand(24, 24, 3) * 255 * (0.5 + 0.5 * full[i, 0])).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)


def _write_dataset(root: Path, rng: np.random.RandomState, images: bool) -> Path:
    root.mkdir()
    _write_split(root, "train", NUM_TRAIN, rng, images=images)
    _write_split(root, "val", NUM_TEST, rng, images=images)
    return root


@pytest.fixture()
def tiny(tmp_path) -> Path:
    return _write_dataset(tmp_path / "tiny", np.random.RandomState(0), images=True)


@pytest.fixture()
def features_only(tmp_path) -> Path:
    """A dataset folder with features and labels but no image at all."""
    rng = np.random.RandomState(1)
    root = _write_dataset(tmp_path / "feats", rng, images=False)
    np.save(root / "train_features_digits_cnn.npy", rng.randn(NUM_TRAIN, 5).astype(np.float32))
    np.save(root / "val_features_digits_cnn.npy", rng.randn(NUM_TEST, 5).astype(np.float32))
    return root


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_linear_fixed_features_without_images(features_only, tmp_path):
    out = tmp_path / "run"
    code = main([*FAST, "--data-dir", str(features_only), "-l", "role", "--train-mode", "linear_fixed_features",
                 "--epochs", "2", "--out", str(out)])
    assert code == 0
    results = _results(out)
    assert results["status"] == "completed" and len(results["epochs"]) >= 1
    assert np.isfinite(results["test_map"])


def test_linear_mode_defaults_to_25_epochs():
    assert parse_args(["--train-mode", "linear_fixed_features"]).epochs == 25
    assert parse_args(["--train-mode", "linear_init"]).epochs == 10


def test_missing_features_name_the_file_and_command(features_only, tmp_path, capsys):
    (features_only / "val_features_digits_cnn.npy").unlink()
    code = main([*FAST, "--data-dir", str(features_only), "--train-mode", "linear_fixed_features",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "val_features_digits_cnn.npy" in err and "preproc.extract_features -d digits -m digits_cnn" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_feature_rows_must_match_label_rows(features_only, tmp_path, capsys):
    np.save(features_only / "train_features_digits_cnn.npy", np.zeros((NUM_TRAIN - 1, 5), np.float32))
    code = main([*FAST, "--data-dir", str(features_only), "--train-mode", "linear_fixed_features",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "label files have 30 rows" in capsys.readouterr().err


def test_extract_then_linear_init(tiny, tmp_path):
    written = extract_features("digits", "digits_cnn", tiny, tiny / "images", bsize=16, pretrained=False)
    train = np.load(written[0])
    assert train.shape == (NUM_TRAIN, 64) and train.dtype == np.float32
    assert np.load(written[1]).shape == (NUM_TEST, 64)
    out = tmp_path / "run"
    code = main([*FAST, "--data-dir", str(tiny), "-l", "EM_APL", "--warmup-epochs", "1", "--train-mode", "linear_init",
                 "--linear-epochs", "2", "--epochs", "2", "--patience", "0", "--out", str(out)])
    assert code == 0
    assert _results(out / "linear")["status"] == "completed"
    assert _results(out / "fine_tune")["status"] == "completed"
    top = _results(out)
    assert top["linear_phase"]["best_epoch"] >= 1 and np.isfinite(top["test_map"])


@pytest.mark.parametrize("loss", ["EM_PL", "GPR"])
def test_clip_pseudo_labels_in_a_linear_mode(tiny, tiny_clip, tmp_path, loss):
    """Every mode builds its loss the same way: the linear modes attach VLPL's or DAMP's CLIP scores too."""
    extract_features("digits", "digits_cnn", tiny, tiny / "images", bsize=16, pretrained=False)
    (tiny / "classes.txt").write_text("red\ngreen\nblue\n")
    out = tmp_path / "run"
    code = main([*FAST, "--data-dir", str(tiny), "-l", loss, "--clip-model", str(tiny_clip), "-th", "0.3",
                 "--train-mode", "linear_fixed_features", "--epochs", "2", "--out", str(out)])
    assert code == 0
    assert _results(out)["status"] == "completed"
    assert len(list((tiny / "clip_scores").glob("*.npy"))) == 1  # one view per image: features are never flipped


def test_search_grid_keeps_every_run_and_picks_best_val(features_only, tmp_path):
    out = tmp_path / "search"
    code = main([*FAST[:-2], "--data-dir", str(features_only), "-l", "an", "--train-mode", "linear_fixed_features",
                 "--epochs", "1", "--search", "--search-lrs", "1e-2", "1e-3", "--search-bsizes", "4", "8", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "search.json").read_text())
    assert len(report["rows"]) == 4
    assert {Path(row["out"]).name for row in report["rows"]} == {"lr0.01_bs4", "lr0.01_bs8", "lr0.001_bs4", "lr0.001_bs8"}
    assert all((Path(row["out"]) / "results.json").is_file() for row in report["rows"])
    assert report["best"]["best_val_map"] == max(row["best_val_map"] for row in report["rows"])


def test_search_refuses_a_fixed_lr():
    with pytest.raises(UserError, match="--search-lrs"):
        parse_args(["--search", "--lr", "1e-3"])


def test_apl_warmup_past_the_run_is_a_user_error(features_only, tmp_path, capsys):
    code = main([*FAST, "--data-dir", str(features_only), "-l", "EM_APL", "--train-mode", "linear_fixed_features",
                 "--epochs", "2", "--warmup-epochs", "2", "--out", str(tmp_path / "run")])
    assert code == 2 and "--warmup-epochs 2 must be below --epochs 2" in capsys.readouterr().err


def _ctrl_c_in_phase(monkeypatch, phase: int, after_epochs: int) -> None:
    """Ctrl-C in this process's `phase`-th training phase, once `after_epochs` epochs of it are checkpointed."""
    from training import trainer

    real_fit, calls = trainer.fit, []

    def fit(*args, on_epoch_end, **kwargs):
        calls.append(phase)
        if len(calls) != phase:
            return real_fit(*args, on_epoch_end=on_epoch_end, **kwargs)
        if after_epochs == 0:
            raise KeyboardInterrupt

        def then_interrupt(state, improved):
            on_epoch_end(state, improved)
            if state.epoch == after_epochs:
                raise KeyboardInterrupt
        return real_fit(*args, on_epoch_end=then_interrupt, **kwargs)

    monkeypatch.setattr(trainer, "fit", fit)


def _epochs(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in _results(run_dir)["epochs"]]


@pytest.mark.parametrize("after_epochs", [0, 1])  # fine-tuning cut before its first epoch ended, or after it
def test_linear_init_resumes_phase_by_phase(tiny, tmp_path, monkeypatch, after_epochs):
    from preprocess import Preprocess

    extract_features("digits", "digits_cnn", tiny, tiny / "images", bsize=16, pretrained=False)
    # random flips at train time: fine-tuning draws from the global RNG (as on the real datasets), so a
    # resumed run matches only if the linear phase leaves that RNG as it would uninterrupted
    flip = Preprocess.transform
    monkeypatch.setattr(Preprocess, "transform", lambda self, train, hflip: flip(self, train, hflip=train))
    argv = [*FAST, "--data-dir", str(tiny), "-l", "role", "--train-mode", "linear_init",
            "--linear-epochs", "2", "--epochs", "2", "--patience", "0"]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _ctrl_c_in_phase(patch, phase=2, after_epochs=after_epochs)
        assert main([*argv, "--out", str(cut)]) == 130
    assert _results(cut / "linear")["status"] == "completed"
    assert _results(cut / "fine_tune")["status"] == "interrupted" and not (cut / "results.json").exists()

    assert main(["--resume", str(cut), "-g", "cpu"]) == 0
    for phase in ("linear", "fine_tune"):
        assert _epochs(cut / phase) == _epochs(tmp_path / "straight" / phase)
    straight, resumed = _results(tmp_path / "straight"), _results(cut)
    assert resumed["status"] == "completed" and resumed["linear_phase"] == straight["linear_phase"]
    assert (resumed["best_epoch"], resumed["test_map"]) == (straight["best_epoch"], straight["test_map"])


def test_search_resumes_where_it_was_cut(features_only, tmp_path, monkeypatch):
    argv = [*FAST[:-2], "--data-dir", str(features_only), "-l", "role", "--train-mode", "linear_fixed_features",
            "--epochs", "2", "--patience", "0", "--search", "--search-lrs", "1e-2", "1e-3", "--search-bsizes", "4", "8"]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _ctrl_c_in_phase(patch, phase=2, after_epochs=1)
        assert main([*argv, "--out", str(cut)]) == 130
    assert (cut / "lr0.01_bs8" / "last.pt").is_file() and not (cut / "lr0.001_bs4").exists()

    assert main(["--resume", str(cut), "-g", "cpu"]) == 0
    rows = lambda run: [{k: v for k, v in row.items() if k != "out"}  # noqa: E731
                        for row in json.loads((run / "search.json").read_text())["rows"]]
    assert rows(cut) == rows(tmp_path / "straight") and len(rows(cut)) == 4
    for point in ("lr0.01_bs4", "lr0.01_bs8", "lr0.001_bs8"):
        assert _epochs(cut / point) == _epochs(tmp_path / "straight" / point)


def test_linear_modes_follow_coles_protocol_and_take_feature_files_by_flag(features_only, tmp_path, capsys):
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    for split, name in (("train", "trainval_feats.npy"), ("val", "test_feats.npy")):
        (features_only / f"{split}_features_digits_cnn.npy").rename(elsewhere / name)
    base = [*FAST, "--data-dir", str(features_only), "-l", "an", "--train-mode", "linear_fixed_features",
            "--epochs", "4"]
    assert main([*base, "--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "python -m preproc.extract_features" in err and "--train-features / --test-features" in err
    out = tmp_path / "run"
    assert main([*base, "--train-features", str(elsewhere / "trainval_feats.npy"),
                 "--test-features", str(elsewhere / "test_feats.npy"), "--out", str(out)]) == 0
    results = _results(out)
    assert results["config"]["patience"] == 0 and len(results["epochs"]) == 4  # never stops early, as Cole et al.


def test_linear_mode_on_a_randomly_initialised_backbone_says_so(features_only, tmp_path, capsys):
    assert main([*FAST, "--data-dir", str(features_only), "-l", "an", "--train-mode", "linear_fixed_features",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert "digits_cnn features come from a randomly initialised network" in capsys.readouterr().err
