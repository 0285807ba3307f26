"""Model selection: the reported number is the test mAP of the epoch (and, with --ema, of the weights)
that scored best on **val**. The scripted epochs below rank differently on val and on test, so any
selection that looks at the test set gives another answer."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from instrumentation import RunLog
from instrumentation import test_oracle as chosen_on_test  # its own name would be collected as a test
from training import engine
from training.engine import TrainState, fit

# epoch -> {(weights, split): mAP}; val and test never rank two epochs (or two weights) alike
SCRIPT = {
    1: {("regular", "val"): 50.0, ("regular", "test"): 90.0, ("ema", "val"): 55.0, ("ema", "test"): 40.0},
    2: {("regular", "val"): 60.0, ("regular", "test"): 95.0, ("ema", "val"): 70.0, ("ema", "test"): 30.0},
    3: {("regular", "val"): 65.0, ("regular", "test"): 20.0, ("ema", "val"): 66.0, ("ema", "test"): 25.0},
}
# without --ema: the regular weights alone; the best val epoch (3) is the worst on test
SCRIPT_REGULAR = {1: (50.0, 90.0), 2: (60.0, 95.0), 3: (70.0, 10.0), 4: (65.0, 99.0)}


class _NoLoss(nn.Module):
    rows_set_by_batches = ()

    def start_epoch(self, epoch, score_train):
        self.epoch = epoch


def _scripted_fit(monkeypatch, tmp_path, scores, epochs, ema: bool, config: dict | None = None):
    """engine.fit with training skipped and every evaluation answered from `scores(epoch, weights, split)`."""
    model, ema_model = nn.Linear(2, 2), nn.Linear(2, 2)
    train = SimpleNamespace(dataset=SimpleNamespace(set_epoch=lambda epoch: None))
    loaders = {"train": train, "train_eval": object(), "val": object(), "test": object()}
    loss = _NoLoss()
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: {"loss": 0.0, "skipped_images": 0})

    def evaluate(m, loader, device, threshold, desc, options, skipped=None):
        weights = "ema" if m is ema_model else "regular"
        split = "val" if loader is loaders["val"] else "test"
        return {"map": scores(loss.epoch, weights, split)}

    monkeypatch.setattr(engine, "evaluate", evaluate)
    run = RunLog(tmp_path / "run", config or {})
    try:
        state = fit(model, loss, None, loaders, torch.device("cpu"), epochs, 0, 0.5, run,
                    ema_model=ema_model if ema else None)
    finally:
        run.close()
    return state, model, ema_model, json.loads((tmp_path / "run" / "results.json").read_text())


def test_the_best_val_epoch_is_reported_not_the_best_test_epoch(monkeypatch, tmp_path):
    scores = lambda epoch, weights, split: SCRIPT_REGULAR[epoch][split == "test"]  # noqa: E731
    state, *_, results = _scripted_fit(monkeypatch, tmp_path, scores, 4, ema=False)
    assert (state.best_epoch, state.best_val_map, state.best_test_map) == (3, 70.0, 10.0)
    assert (results["best_epoch"], results["best_val_map"], results["test_map"]) == (3, 70.0, 10.0)


def test_train_state_keeps_the_weights_of_the_best_val_epoch():
    state, model = TrainState(), nn.Linear(1, 1)
    nn.init.constant_(model.weight, 1.0)
    assert state.update(1, 50.0, 90.0, model)
    nn.init.constant_(model.weight, 2.0)
    assert state.update(2, 60.0, 10.0, model)  # better on val, worse on test
    nn.init.constant_(model.weight, 3.0)
    assert not state.update(3, 55.0, 99.0, model)
    assert (state.best_epoch, state.best_test_map, state.epochs_without_gain) == (2, 10.0, 1)
    assert state.best_weights["weight"].item() == 2.0
    assert state.should_stop(1) and not state.should_stop(2) and not state.should_stop(0)


def test_ema_or_regular_is_chosen_on_val_and_the_test_chosen_number_spans_every_epoch(monkeypatch, tmp_path):
    scores = lambda epoch, weights, split: SCRIPT[epoch][weights, split]  # noqa: E731
    state, model, ema_model, results = _scripted_fit(monkeypatch, tmp_path, scores, 3, ema=True,
                                                     config={"report_test_oracle": True})
    assert [r["selected"] for r in results["epochs"]] == ["ema", "ema", "ema"]  # EMA wins on val every epoch
    assert (results["best_epoch"], results["best_val_map"], results["test_map"]) == (2, 70.0, 30.0)
    assert results["best_weights"] == state.best_source == "ema"
    for name, value in ema_model.state_dict().items():  # the weights kept as best are the EMA's
        assert torch.equal(state.best_weights[name], value) and not torch.equal(value, model.state_dict()[name])
    # PU-MLC's number, chosen on test over every epoch and both weights: epoch 2's regular weights
    assert results["test_map_chosen_on_test"]["map"] == 95.0
    assert (results["test_map_chosen_on_test"]["epoch"], results["test_map_chosen_on_test"]["weights"]) == (2, "regular")


@pytest.mark.parametrize("records, expected", [
    ([{"epoch": 1, "test_map": 50.0, "ema_test_map": 40.0}, {"epoch": 2, "test_map": 70.0, "ema_test_map": 80.0},
      {"epoch": 3, "test_map": 60.0, "ema_test_map": 65.0}], (80.0, 2, "ema")),
    ([{"epoch": 1, "test_map": 50.0}, {"epoch": 2, "test_map": 75.0}, {"epoch": 3, "test_map": 60.0}], (75.0, 2, "regular")),
])
def test_test_oracle_hand_values(records, expected):
    oracle = chosen_on_test(records)
    assert (oracle["map"], oracle["epoch"], oracle["weights"]) == expected
