"""Runs of the CAM heads: checkpoints (the head in config.json, rebuilt by --eval-only; a checkpoint
from before heads existed loads as linear), and python -m scripts.show_cams: the PNG grid (its size,
a different map per class) and the runs it refuses (a head without maps, a folder that is not a run)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from main import main
from scripts import show_cams
from training.checkpoint import BEST, load_checkpoint, save_checkpoint

ROWS, TOP = 3, 2


@pytest.fixture(scope="module")
def runs(small_digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_runs")
    for head in ("boostlu", "linear"):
        assert main(["-g", "cpu", "-l", "an", "--epochs", "2", "--head", head, "--data-dir", str(small_digits),
                     "--out", str(root / head)]) == 0
    return root


def test_the_head_is_in_the_checkpoint(runs, capsys):
    config = json.loads((runs / "boostlu" / "config.json").read_text())
    assert (config["head"], config["boost_alpha"]) == ("boostlu", 5.0)
    assert main(["--eval-only", str(runs / "boostlu" / BEST), "-g", "cpu"]) == 0
    scored = json.loads((runs / "boostlu" / "eval_best.json").read_text())
    results = json.loads((runs / "boostlu" / "results.json").read_text())
    assert scored["test"]["map"] == pytest.approx(results["test_map"], abs=1e-9)


@pytest.mark.parametrize("head, code", [("linear", 0), ("boostlu", 2)])
def test_a_checkpoint_without_a_head_loads_as_linear(runs, head, code, tmp_path, capsys):
    ckpt = load_checkpoint(runs / head / BEST)
    for setting in ("head", "boost_alpha", "fast"):  # what a checkpoint written before heads existed lacks
        del ckpt["config"][setting]
    old = tmp_path / "old.pt"
    save_checkpoint(old, ckpt)
    assert main(["--eval-only", str(old), "-g", "cpu"]) == code
    if head == "linear":
        results = json.loads((runs / head / "results.json").read_text())
        assert json.loads((tmp_path / "eval_old.json").read_text())["test"]["map"] == \
            pytest.approx(results["test_map"], abs=1e-9)
    else:  # BoostLU's weights in a linear model: refused in one line, not a traceback
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds weights that do not fit the model its config describes" in err[0]


def test_the_grid_shows_a_map_per_class(runs, tmp_path):
    png = tmp_path / "cams.png"
    assert show_cams.main([str(runs / "boostlu"), "--split", "test", "--images", str(ROWS), "--top", str(TOP),
                           "--out", str(png)]) == 0
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    panel = show_cams.PANEL_PX
    assert pixels.shape == (ROWS * panel, (1 + TOP) * panel, 3)  # one row per image: the image, then TOP maps

    def picture(row: int, col: int) -> np.ndarray:  # a panel below its title band
        top = row * panel + int(show_cams.TITLE_FRACTION * panel)
        return pixels[top:(row + 1) * panel, col * panel:(col + 1) * panel]

    for row in range(ROWS):
        assert not np.array_equal(picture(row, 0), picture(row, 1))  # the map is drawn over the image
    assert any(not np.array_equal(picture(row, 1), picture(row, 2)) for row in range(ROWS))  # each class its own map
    assert show_cams.main([str(runs / "boostlu"), "--images", "1"]) == 0  # default: into the run folder
    assert Image.open(runs / "boostlu" / "cams_test.png").size == ((1 + 3) * panel, panel)


@pytest.mark.parametrize("which, message", [
    ("linear", "was trained with --head linear, which has no class activation maps; show_cams reads runs of "
               "--head cam or boostlu"),
    ("nothing", "is not a run folder with a best.pt"),
])
def test_runs_without_maps_are_refused_in_one_line(runs, which, message, tmp_path, capsys):
    folder = runs / which if which == "linear" else tmp_path
    assert show_cams.main([str(folder), "--out", str(tmp_path / "cams.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cams.png").exists()
