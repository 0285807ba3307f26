"""AEVLP from the command line: the --preset aevlp-* commands, the --stop-drop rule, bad input (one line, exit
code 2, nothing written) and one GPR run on digits with a tiny CLIP."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from conftest import slice_digits
from test_bad_input import refused

from cli import parse_args
from errors import UserError
from main import main
from presets import AEVLP_SETTINGS, RUN_PRESETS
from training import engine
from training.engine import TrainState, stop_reason

FAST = ["-g", "cpu", "--num-workers", "0"]


@pytest.fixture
def single_positive(small_digits, tmp_path):
    """The formatted files of small digits with the record of their single-positive labels (seed 1200)."""
    folder = tmp_path / "single_positive"
    shutil.copytree(small_digits, folder, ignore=shutil.ignore_patterns("images", "clip_scores"))
    (folder / "observed_labels.json").write_text(json.dumps(
        {"protocol": "single_positive", "num_pos": 1, "num_neg": 0, "seed": 1200}))
    return folder


def test_the_coco_preset_is_the_authors_protocol_and_every_switch_has_an_off_form(single_positive, tmp_path):
    data = ["--data-dir", str(single_positive), "--out", str(tmp_path / "run")]
    cfg = parse_args(["--preset", "aevlp-coco", *FAST, *data])
    assert (cfg.dataset, cfg.loss, cfg.model, cfg.epochs, cfg.bsize, cfg.lr, cfg.classifier_lr_mult) == \
        ("coco", "GPR", "resnet50", 8, 16, 1e-5, 10)
    assert (cfg.patience, cfg.stop_drop, cfg.clip_model, cfg.val_set_variant) == (2, 2, "ViT-B-16", "clean")
    hp = cfg.hyper
    assert {name: getattr(hp, name) for name in AEVLP_SETTINGS["coco"]} == AEVLP_SETTINGS["coco"]
    assert (hp.pseudo_labels, hp.damp_norm, hp.text_graph, hp.expected_pos) == ("damp", "imagenet", "random", 2.9)
    mine = parse_args(["--preset", "aevlp-coco", *FAST, *data, "--pseudo-labels", "off", "--stop-drop", "0",
                       "--patience", "0", "--text-graph", "off", "--damp-norm", "clip", "--gr-beta", "0", "2", "-2", "-2"])
    assert (mine.hyper.pseudo_labels, mine.stop_drop, mine.patience, mine.hyper.text_graph, mine.hyper.damp_norm,
            mine.hyper.gr_beta) == ("off", 0, 0, "off", "clip", (0, 2, -2, -2))
    assert parse_args(["--preset", "aevlp-cub", *FAST, *data]).hyper.gr_q2q3 == (0.01, 1.5)


def test_help_prints_each_preset_expansion(capsys):
    assert main(["-h"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("aevlp-pascal", "aevlp-coco", "aevlp-nuswide", "aevlp-cub"):
        assert " ".join(RUN_PRESETS[name].flags) in text
    assert "Tran et al. ICCV 2025" in text and "--gr-beta W0 WT B0 BT" in text


def test_a_preset_refuses_observed_labels_of_another_protocol(single_positive, tmp_path):
    (single_positive / "observed_labels.json").write_text(json.dumps(
        {"protocol": "known_ratio", "known_ratio": 0.1, "seed": 0}))
    with pytest.raises(UserError, match=r"observed labels \(single_positive, --seed 1200\), but .* holds known_ratio "
                                        r"labels: sample them into a copy: .*generate_observed_labels --dataset pascal "
                                        r"--data-dir \S+ --seed 1200`"):
        parse_args(["--preset", "aevlp-pascal", *FAST, "--data-dir", str(single_positive), "--out", str(tmp_path / "run")])


def test_stop_drop_more_than_the_points_below_the_best():
    state = TrainState(best_val_map=80.0, epochs_without_gain=1)
    assert stop_reason(state, 78.0, patience=2, stop_drop=2) is None  # exactly 2 below: not more than 2
    assert "more than 2 points below the best, 80.00" in stop_reason(state, 77.9, patience=2, stop_drop=2)
    assert stop_reason(state, 77.9, patience=2, stop_drop=0) is None  # off
    state.epochs_without_gain = 2
    assert stop_reason(state, 79.9, patience=2, stop_drop=2) == "val mAP has not improved for 2 epoch(s)"


@pytest.mark.parametrize("flag, value, expected", [
    ("--gr-beta", "0 nan -2 -2", "argument --gr-beta: must be a finite number, got nan"),
    ("--gr-alpha", "0.5 2 inf 0.5", "argument --gr-alpha: must be a finite number, got inf"),
    ("--gr-q2q3", "0 1", "argument --gr-q2q3: must be > 0, got 0"),
    ("--gpr-lam", "1.5 0.5", "argument --gpr-lam: must be in [0, 1], got 1.5"),
    ("--gpr-rho", "nan", "argument --gpr-rho: must be a finite number"),
    ("--gpr-reg", "-1", "argument --gpr-reg: must be >= 0, got -1"),
    ("--damp-grid", "0", "argument --damp-grid: must be in [1, 6], got 0"),
    ("--damp-grid", "7", "argument --damp-grid: must be in [1, 6], got 7"),
    ("--damp-temp", "0", "argument --damp-temp: must be > 0, got 0"),
    ("--damp-eta", "1.1", "argument --damp-eta: must be in [0, 1], got 1.1"),
    ("--damp-threshold", "inf", "argument --damp-threshold: must be a finite number"),
    ("--damp-top-k", "0", "argument --damp-top-k: must be > 0, got 0"),
    ("--damp-neg-ratio", "1", "argument --damp-neg-ratio: must be in [0, 1), got 1"),
    ("--text-graph-seed", "-1", "argument --text-graph-seed: must be in [0, 4.29497e+09], got -1"),
    ("--text-graph-topk", "0", "argument --text-graph-topk: must be > 0, got 0"),
    ("--text-graph-reweight", "2", "argument --text-graph-reweight: must be in [0, 1], got 2"),
    ("--stop-drop", "-2", "argument --stop-drop: must be >= 0, got -2"),
])
def test_numeric_flags_finite_and_in_range(flag, value, expected, capsys, tmp_path):
    assert expected in refused(capsys, tmp_path, "-l", "GPR", flag, *value.split())


def test_bad_input_at_set_up(capsys, tmp_path, small_digits, tiny_clip):
    data = ["-l", "GPR", "--data-dir", small_digits, "--clip-model", tiny_clip, "--epochs", 1]
    assert f"--clip-model {tmp_path}/none.json does not exist" in refused(
        capsys, tmp_path, *data, "--clip-model", tmp_path / "none.json")
    assert "--damp-top-k 11 is more than the dataset's 10 classes" in refused(capsys, tmp_path, *data, "--damp-top-k", 11)
    np.save(tmp_path / "relation.npy", np.eye(3, dtype=np.float32))
    assert "--relation" in refused(capsys, tmp_path, *data, "--relation", tmp_path / "none.npy")
    assert r"expected floats of shape (10, 10)" in refused(capsys, tmp_path, *data, "--relation", tmp_path / "relation.npy")
    # a dataset of your own without its class names: DAMP's prompts need them
    mine = tmp_path / "mine"
    shutil.copytree(small_digits, mine, ignore=shutil.ignore_patterns("images", "clip_scores"))
    (mine / "images").symlink_to(small_digits / "images")
    line = refused(capsys, tmp_path, *data[:2], "-d", "mine", "--data-dir", mine, "--image-root", mine / "images",
                   "--expected-pos", 2, "-m", "digits_cnn", "--clip-model", tiny_clip)
    assert f"write one name per label column to {mine}/classes.txt" in line


def test_gpr_on_digits_with_a_tiny_clip(digits_master, tiny_clip, tmp_path, capsys, monkeypatch):
    """One epoch with DAMP's pseudo-labels: the log names the cache file that a later run reads."""
    small_digits = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)  # its own cache
    out, drops = tmp_path / "run", []
    monkeypatch.setattr(engine, "stop_reason", lambda *args: drops.append(args[-1]) or stop_reason(*args))
    assert main(["-l", "GPR", *FAST, "--epochs", "1", "--data-dir", str(small_digits), "--clip-model", str(tiny_clip),
                 "--stop-drop", "1.5", "--out", str(out)]) == 0
    assert drops == [1.5]  # the rule the training loop applied
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and math.isfinite(results["test_map"])
    assert set(results["epochs"][0]["train_terms"]) == {"main", "reg"}
    (cache,) = (small_digits / "clip_scores").glob("*.npy")
    assert json.loads(cache.with_suffix(".json").read_text())["crops"] == {"grid": 4, "norm": "imagenet"}
    err = capsys.readouterr().err
    assert str(cache) in err and "DAMP pseudo-labels (grid 4" in err
    assert np.load(cache).shape == (17 * 96, 10)  # 96 train images x 17 crops, one orientation (digits never flip)
