"""--skip-bad-images in every pass over images: training, APL's scoring of the train set, VLPL's CLIP
scores, feature extraction and evaluation leave an unreadable image out, and the run names each one
once (results.json lists them all); under torchrun the counts are gathered, and a process whose part
of a batch is all unreadable still takes its part in the step: 2 processes give the numbers of one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHAPES_TRAIN, shapes_dataset
from datasets import SPLIT_SEED, VAL_FRAC, generate_split
from main import main
from presets import DATA_ROOT
from preproc.extract_features import main as extract_features
from ranks import rank_batches, run_two
from test_world_size import assert_same_epochs, assert_same_state, epochs_of

TRAIN_ROWS, _ = generate_split(SHAPES_TRAIN, VAL_FRAC, SPLIT_SEED)  # official rows of the train split


def _damage(data: Path, names: list[str]) -> list[Path]:
    """The images `names` (relative to `data`) truncated: unreadable."""
    paths = [data / name for name in names]
    for path in paths:
        path.write_bytes(path.read_bytes()[:60])
    return paths


def _args(data: Path, out: Path, loss: str, *extra: str, skip: bool = True) -> list[str]:
    return ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", "0",
            "-l", loss, "--bsize", "8", *(["--skip-bad-images"] if skip else []),
            "--clip-model", str(DATA_ROOT / "tiny_clip.json"), *extra, "--out", str(out)]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_every_pass_leaves_an_unreadable_image_out_and_names_it_once(tmp_path, capsys):
    data = shapes_dataset(tmp_path / "shapes")
    bad = _damage(data, [f"train/{TRAIN_ROWS[0]}.png", f"train/{TRAIN_ROWS[1]}.png", "val/5.png"])  # val/: test
    assert main(_args(data, tmp_path / "stops", "EM", "--epochs", "1", skip=False)) == 2
    assert "--skip-bad-images" in capsys.readouterr().err

    # EM_APL for 1 epoch scores the train set before it (APL's pseudo-labels); EM_PL scores it with CLIP first
    for loss in ("EM_APL", "EM_PL"):
        out = tmp_path / loss
        assert main(_args(data, out, loss, "--epochs", "1")) == 0, loss
        err = capsys.readouterr().err
        assert all(err.count(str(path)) == 1 for path in bad), err  # each named once, whichever passes met it
        results = _results(out)
        assert results["status"] == "completed" and sorted(results["unreadable_images"]) == sorted(map(str, bad))
        epoch, = results["epochs"]
        assert (epoch["skipped_images"], epoch["test"]["skipped_images"]) == (2, 1) and "skipped_images" not in \
            epoch["val"]
    assert not (data / "clip_scores").exists()  # not cached: a repaired image is scored next time

    # feature extraction gives them NaN rows; the linear mode refuses those, or leaves them out
    assert extract_features(["-d", "digits", "--data-dir", str(data), "--image-root", str(data), "-m", "digits_cnn",
                             "--num-workers", "0", "--skip-bad-images"]) == 0
    features = np.load(data / "train_features_digits_cnn.npy")
    assert np.isnan(features[TRAIN_ROWS[:2]]).all() and np.isfinite(np.delete(features, TRAIN_ROWS[:2], 0)).all()
    linear = ["--train-mode", "linear_fixed_features", "--epochs", "2"]
    assert main(_args(data, tmp_path / "refused", "EM", *linear, skip=False)) == 2
    assert "2 row(s) are not finite" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "linear", "EM", *linear)) == 0
    results = _results(tmp_path / "linear")
    assert sorted(results["unreadable_images"]) == sorted(map(str, bad)) and results["skipped_images"] == 2


@pytest.fixture(scope="module")
def damaged_runs(tmp_path_factory) -> Path:
    """EM (a mean over images) and PU (the whole batch) end to end with unreadable images, among them the
    whole of process 1's part of its first batch: one process, and two."""
    root = tmp_path_factory.mktemp("skip_ddp")
    data = shapes_dataset(root / "shapes", features=False)
    part = rank_batches(len(TRAIN_ROWS), 8, 2, seed=0)[1][0]  # the 4 rows process 1 loads first
    _damage(data, [f"train/{TRAIN_ROWS[row]}.png" for row in part] + ["val/5.png"])
    runs = {loss: _args(data, root / "{}" / loss, loss, "--epochs", "2", "--freeze-bn") for loss in ("EM", "PU")}
    for loss, args in runs.items():
        assert main([arg.format("one") for arg in args]) == 0
    codes, _ = run_two([[arg.format("two") for arg in args] for args in runs.values()], root / "ranks")
    assert codes == [[0, 0], [0, 0]]
    return root


@pytest.mark.parametrize("loss", ["EM", "PU"])
def test_under_torchrun_two_processes_equal_one(damaged_runs, loss):
    one, two = damaged_runs / "one" / loss, damaged_runs / "two" / loss
    assert_same_epochs(epochs_of(one), epochs_of(two), loss, epochs=2)
    assert_same_state(one, two, loss)
    assert [epoch["skipped_images"] for epoch in epochs_of(two)] == [4, 4]
    assert _results(two)["unreadable_images"] == _results(one)["unreadable_images"]
