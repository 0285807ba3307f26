"""The same numbers on any number of processes: every registered loss trained by 2 gloo processes
equals the single-process run (weights, loss state, per-epoch losses and metrics to 1e-5), and a
2-process run interrupted and resumed in 1 process gives the uninterrupted epochs.

Linear mode on cached features (fast: no backbone), 3 epochs of the 45 training rows of
`shapes_dataset` in global batches of 8: the last batch of 5 splits 3 + 2. The 2-process runs are forked ranks calling
`main([...])` for every loss in turn (tests/ranks.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import shapes_dataset
from losses import LOSSES
from main import main
from presets import DATA_ROOT
from ranks import run_two

EPOCHS, STOP = 3, 3  # the interrupted runs stop during epoch 3: last.pt holds epoch 2


def _args(data: Path, loss: str, out: Path) -> list[str]:
    return ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", "0",
            "--train-mode", "linear_fixed_features", "-l", loss, "--bsize", "8", "--lr", "1e-2",
            "--epochs", str(EPOCHS), "--warmup-epochs", "1", "--expected-pos", "1.5",
            "--clip-model", str(DATA_ROOT / "tiny_clip.json"), "--out", str(out)]  # the CLIP of VLPL's scores


def epochs_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_epochs(one: list[dict], other: list[dict], loss: str, epochs: int = EPOCHS) -> None:
    assert [e["epoch"] for e in other] == [e["epoch"] for e in one] == list(range(1, epochs + 1)), loss
    for a, b in zip(one, other):
        where = (loss, a["epoch"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5), where
        assert b["train_terms"] == pytest.approx(a["train_terms"], abs=1e-5), where
        for split in ("val", "test"):
            assert b[split] == pytest.approx(a[split], abs=1e-5), (*where, split)


def assert_same_state(one: Path, other: Path, loss: str) -> None:
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (one, other))
    for part in ("model", "loss_state"):
        assert list(b[part]) == list(a[part]), (loss, part)
        for key, value in a[part].items():
            if value.is_floating_point():
                torch.testing.assert_close(b[part][key], value, atol=1e-5, rtol=0, msg=f"{loss} {part} {key}")
            else:  # LL-Cp's corrections, APL's pseudo-label marks
                assert torch.equal(b[part][key], value), (loss, part, key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every registered loss: one process, 2 processes, and 2 processes interrupted during epoch 3."""
    root = tmp_path_factory.mktemp("world_size")
    data = shapes_dataset(root / "shapes")
    names = list(LOSSES)
    for loss in names:
        assert main(_args(data, loss, root / "one" / loss)) == 0, loss
    codes, _ = run_two([_args(data, loss, root / "two" / loss) for loss in names], root / "two_ranks")
    assert codes == [[0] * len(names)] * 2
    codes, _ = run_two([_args(data, loss, root / "cut" / loss) for loss in names], root / "cut_ranks", interrupt=STOP)
    assert codes == [[130] * len(names)] * 2
    for loss in names:  # resumed in one process
        assert main(["--resume", str(root / "cut" / loss)]) == 0, loss
    return {"one": root / "one", "two": root / "two", "cut": root / "cut"}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_processes_equal_one(runs, loss):
    one, two = runs["one"] / loss, runs["two"] / loss
    assert_same_epochs(epochs_of(one), epochs_of(two), loss)
    assert_same_state(one, two, loss)
    results = json.loads((two / "results.json").read_text())
    assert (results["world_size"], results["bsize_global"], results["bsize_per_process"]) == (2, 8, 4)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_processes_interrupted_then_resumed_in_one_equal_one(runs, loss):
    one, cut = runs["one"] / loss, runs["cut"] / loss
    assert_same_epochs(epochs_of(one), epochs_of(cut), loss)
    assert_same_state(one, cut, loss)
    results = json.loads((cut / "results.json").read_text())  # each stretch of epochs keeps its process count
    assert results["world_sizes"] == [{"from_epoch": 1, "world_size": 2, "bsize_per_process": 4},
                                      {"from_epoch": STOP, "world_size": 1, "bsize_per_process": 8}]
    assert (results["world_size"], results["bsize_per_process"]) == (1, 8)


# --- end to end on images that flip, with PU-MLC's multi-scale crop -------------------------------

FLIPPING = ("EM_APL", "PU", "EM_PL")  # the per-image path; the whole-batch one with MixUp of images; flip views


def _e2e_args(data: Path, loss: str, out: Path, workers: int) -> list[str]:
    # a dataset of our own flips at train time; BatchNorm frozen, so that the CNN is a function of each image;
    # lr 1e-3: at 1e-2 the CNN collapses to constant outputs within an epoch
    return ["-d", "shapes", "--data-dir", str(data), "-m", "digits_cnn", "-g", "cpu", "--num-workers", str(workers),
            "-l", loss, "--bsize", "8", "--lr", "1e-3", "--epochs", "2", "--warmup-epochs", "1", "--patience", "0",
            "--freeze-bn", "--scale-size", "128", "--crop-size", "24", "--clip-model", str(DATA_ROOT / "tiny_clip.json"),
            "--out", str(out)]


@pytest.fixture(scope="module")
def flipping_runs(tmp_path_factory) -> Path:
    """Each of FLIPPING end to end: one process without loader workers and 2 processes with one worker each;
    EM_APL also in one process with 2 workers."""
    root = tmp_path_factory.mktemp("flipping")
    data = shapes_dataset(root / "shapes", features=False)
    for loss in FLIPPING:
        assert main(_e2e_args(data, loss, root / "one_w0" / loss, 0)) == 0, loss
    assert main(_e2e_args(data, "EM_APL", root / "one_w2" / "EM_APL", 2)) == 0
    codes, _ = run_two([_e2e_args(data, loss, root / "two" / loss, 1) for loss in FLIPPING], root / "two_ranks")
    assert codes == [[0] * len(FLIPPING)] * 2
    return root


@pytest.mark.parametrize("loss", FLIPPING)
def test_flips_and_crops_are_the_same_in_one_or_two_processes_with_any_worker_count(flipping_runs, loss):
    one = flipping_runs / "one_w0" / loss
    # it learns (a collapsed model scores the base rate, 61.4, and Adam turns its near-zero gradients into
    # steps of noise): the weights compared below carry what the images taught
    assert max(epoch["val"]["map"] for epoch in epochs_of(one)) > 65, loss
    for other in [flipping_runs / "two" / loss] + ([flipping_runs / "one_w2" / loss] if loss == "EM_APL" else []):
        assert_same_epochs(epochs_of(one), epochs_of(other), loss, epochs=2)
        assert_same_state(one, other, loss)


def test_each_image_draws_its_own_flip_and_crop_each_epoch():
    from preprocess import ImageDraws, crop_sides

    flips = [[ImageDraws(0, epoch, index).flip() for index in range(400)] for epoch in (1, 2)]
    assert all(150 < sum(epoch) < 250 for epoch in flips) and flips[0] != flips[1]
    assert [ImageDraws(1, 1, index).flip() for index in range(400)] != flips[0]  # the seed
    assert ImageDraws(0, 1, 5).square_crop(crop_sides(128), 128) == ImageDraws(0, 1, 5).square_crop(crop_sides(128), 128)
