"""The losses beyond the references (Large-Loss, GR, Hill, SPLC, focal, ASL): hand-derived values in
every phase, their schedules, their state through state_dict and through a Ctrl-C + --resume run,
and the classifier learning-rate multiplier."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cli import parse_args
from config import LossHyper
from errors import UserError
from losses import create_loss
from main import main
from methods.gr import GRLoss, gr_schedule
from methods.large_loss import LargeLoss, num_large
from training.checkpoint import LAST, load_checkpoint
from training.trainer import model_param_groups

LN3 = math.log(3.0)
E = math.e


def ln(x: float) -> float:
    return math.log(x)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# The 2 x 3 batch of tests/test_losses.py: probabilities (.75, .25, .5) / (.5, .25, .75), positives at
# (0, 0) and (1, 2); every unknown entry has p in {.25, .5}.
UNKNOWN_P = (.25, .5, .5, .25)
PM = 3 / (3 + E)  # sigmoid(ln 3 - 1): a positive's probability after the margin of 1


def _gr_unknown(p: float, w: float, b: float, mu: float, sigma: float) -> float:
    k = sig(w * p + b)
    v = math.exp(-(p - mu) ** 2 / (2 * sigma ** 2))
    return v * (k * (1 - p ** 0.01) / 0.01 + (1 - k) * p)  # q3 = 1: (1 - (1 - p)) / 1 = p


# GR at epoch 1 of 3: w 0, b -2, mu .5 + .3 / 3 = .6, sigma 2 - 1.5 / 3 = 1.5
EPOCH_1_BEYOND = {
    # AN on the logits, no epsilon: every unknown is a negative
    "LL-R": (-2 * ln(.75) - ln(.75) - ln(.5) - ln(.5) - ln(.75)) / 6,
    "LL-Ct": (-2 * ln(.75) - ln(.75) - ln(.5) - ln(.5) - ln(.75)) / 6,
    "LL-Cp": (-2 * ln(.75) - ln(.75) - ln(.5) - ln(.5) - ln(.75)) / 6,
    "GR": (-2 * ln(.75 + 1e-7) + sum(_gr_unknown(p, 0, -2, .6, 1.5) for p in UNKNOWN_P)) / 6,
    "hill": (2 * (1 - PM) ** 2 * -ln(PM) + sum((1.5 - p) * p * p for p in UNKNOWN_P)) / 6,
    "SPLC": (2 * (1 - PM) ** 2 * -ln(PM) + sum(p * p * -ln(1 - p) for p in UNKNOWN_P)) / 6,
    "focal": (2 * .25 ** 2 * -ln(.75) + sum(p * p * -ln(1 - p) for p in UNKNOWN_P)) / 6,
    # the clip shifts p down by .05 on negatives: .2, .45
    "ASL": (2 * -ln(.75) + sum((p - .05) ** 4 * -ln(1 - (p - .05)) for p in UNKNOWN_P)) / 6,
}

# The Large-Loss batch: probabilities (.75, .6, .75) / (.25, .75, .25), positives (0, 0) and (1, 1).
# AN losses of the unknown entries: (0, 1) -ln .4 = .92, (0, 2) -ln .25 = 1.39, (1, 0) and (1, 2) -ln .75 = .29.
LL_LOGITS = torch.tensor([[LN3, ln(1.5), LN3], [-LN3, LN3, -LN3]])
LL_TARGETS = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
INDEX = torch.tensor([0, 1])
HP = LossHyper(epochs=3, delta_rel=10.0)  # k = ceil(6 x 0.1) = 1 at epoch 2, ceil(6 x 0.2) = 2 at epoch 3


def _ll(name: str, epochs: tuple[int, ...]) -> list[float]:
    loss = create_loss(name, HP, 2, 3)
    loss.attach_train_labels(LL_TARGETS)
    values = []
    for epoch in epochs:
        loss.start_epoch(epoch, lambda: None)
        values.append(loss(LL_LOGITS, LL_TARGETS, INDEX)["main"].item())
    return values


def test_large_loss_rejection_and_correction_by_hand():
    base = [-ln(.75), -ln(.4), -ln(.25), -ln(.75), -ln(.75), -ln(.75)]
    an = sum(base) / 6
    # LL-R: epoch 2 zeroes the largest (-ln .25), epoch 3 the two largest (-ln .25, -ln .4)
    assert _ll("LL-R", (1, 2, 3)) == pytest.approx([an, an + ln(.25) / 6, an + (ln(.25) + ln(.4)) / 6], rel=1e-5)
    # LL-Ct: their targets flipped to 1: -ln .25 -> -ln .75, and at epoch 3 also -ln .4 -> -ln .6
    ct = _ll("LL-Ct", (1, 2, 3))
    assert ct == pytest.approx([an, an + (ln(.25) - ln(.75)) / 6, an + (ln(.25) - ln(.75) + ln(.4) - ln(.6)) / 6],
                               rel=1e-5)


def test_large_loss_permanent_correction_by_hand():
    loss = create_loss("LL-Cp", HP, 2, 3)
    loss.attach_train_labels(LL_TARGETS)
    loss.start_epoch(2, lambda: None)
    value = loss(LL_LOGITS, LL_TARGETS, INDEX)["main"].item()
    assert value == pytest.approx((5 * -ln(.75) - ln(.4)) / 6, rel=1e-5)  # (0, 2) flipped: -ln .75
    assert loss.corrected.tolist() == [[False, False, True], [False, False, False]]
    # epoch 3: LL-Cp's k stays ceil(6 x 0.1) = 1; (0, 2) is a positive now, so the next largest, (0, 1), is flipped
    loss.start_epoch(3, lambda: None)
    value = loss(LL_LOGITS, LL_TARGETS, INDEX)["main"].item()
    assert value == pytest.approx((5 * -ln(.75) - ln(.6)) / 6, rel=1e-5)
    assert loss.corrected.tolist() == [[False, True, True], [False, False, False]]
    restored = create_loss("LL-Cp", HP, 2, 3)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.corrected, loss.corrected)


def test_large_loss_k_counts_entries_of_the_batch():
    """k = ceil(B C rate): the batch's rows times its classes (67 x 3 = 201 entries at 10%: 20.1 -> 21)."""
    assert num_large(67, 3, "LL-Cp", 10.0, 5) == 21 and num_large(67, 3, "LL-R", 10.0, 2) == 21
    loss = create_loss("LL-R", LossHyper(epochs=3, delta_rel=50.0), 2, 3)
    loss.attach_train_labels(LL_TARGETS)
    loss.start_epoch(2, lambda: None)  # k = ceil(2 x 3 x .5) = 3 of the 4 unknown entries rejected: one -ln .75 is left
    value = loss(LL_LOGITS, LL_TARGETS, INDEX)["main"].item()
    assert value == pytest.approx((-ln(.75) - ln(.75) - ln(.75)) / 6, rel=1e-5)


def test_large_loss_schedule():
    assert [num_large(8, 20, "LL-R", 0.5, e) for e in (1, 2, 3, 10)] == [0, 1, 2, 8]  # ceil(160 x .005 (e - 1))
    # 200 x .005 is 1 exactly: the authors' 1 - (1 - .005) in floats gives 1.0000000000000009 and k = 2
    assert num_large(20, 10, "LL-Ct", 0.5, 2) == 1
    assert [num_large(16, 80, "LL-Cp", 0.1, e) for e in (1, 2, 9)] == [0, 2, 2]  # fixed ceil(1280 x .001)
    assert num_large(2, 3, "LL-R", 100, 5) == 6  # never more than the batch
    with pytest.raises(UserError, match="--delta-rel"):
        LargeLoss("LL-R", 2, 3, 0.0)
    assert create_loss("LL-Ct", LossHyper(), 2, 3).delta_rel == 0.2  # the scheme's default without the flag


def test_gr_schedule_and_hand_values():
    # the authors' train.py: (w, b) at (e - 1) / T of the way, (mu, sigma) at e / T
    assert gr_schedule(1, 4) == pytest.approx({"w": 0.0, "b": -2.0, "mu": 0.575, "sigma": 1.625})
    assert gr_schedule(4, 4) == pytest.approx({"w": 1.5, "b": -2.0, "mu": 0.8, "sigma": 0.5})
    loss = create_loss("GR", HP, 2, 3)
    loss.start_epoch(3, lambda: None)  # epoch 3 of 3: w 4/3, b -2, mu .8, sigma .5
    logits = torch.tensor([[LN3, -LN3, 0.0], [0.0, -LN3, LN3]])
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    value = loss(logits, targets, INDEX)["main"].item()
    expected = (-2 * ln(.75 + 1e-7) + sum(_gr_unknown(p, 4 / 3, -2, .8, .5) for p in UNKNOWN_P)) / 6
    assert value == pytest.approx(expected, rel=1e-4)
    restored = GRLoss(3)
    restored.load_state_dict(loss.state_dict())
    assert restored(logits, targets, INDEX)["main"].item() == pytest.approx(value, rel=1e-6)
    assert {"w", "b", "mu", "sigma"} <= set(loss.state_dict())


def test_splc_corrects_confident_unknowns_from_epoch_2():
    logits = torch.tensor([[LN3, -LN3, 0.0], [0.0, -LN3, LN3]])
    targets = torch.tensor([[0.0, 0, 1], [0, 0, 1]])  # (0, 0) unknown at p = .75 > .6; (0, 2) at .5 positive
    pos_half = (1 - sig(-1)) ** 2 * -ln(sig(-1))  # margin-shifted positive at logit 0
    rest = pos_half + (1 - PM) ** 2 * -ln(PM) + sum(p * p * -ln(1 - p) for p in (.25, .5, .25))
    loss = create_loss("SPLC", HP, 2, 3)
    loss.start_epoch(1, lambda: None)
    assert loss(logits, targets, INDEX)["main"].item() == pytest.approx((rest + .75 ** 2 * -ln(.25)) / 6, rel=1e-5)
    loss.start_epoch(2, lambda: None)  # now a positive, without the margin
    assert loss(logits, targets, INDEX)["main"].item() == pytest.approx((rest + .25 ** 2 * -ln(.75)) / 6, rel=1e-5)


def test_classifier_lr_mult_groups_and_flags(tmp_path):
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 3))
    model.add_module("classifier", nn.Linear(3, 2))
    assert len(model_param_groups(model, 1e-3, 1.0)) == 1
    body, head = model_param_groups(model, 1e-3, 10.0)
    assert head["lr"] == pytest.approx(1e-2) and "lr" not in body
    assert {id(p) for p in head["params"]} == {id(p) for p in model.classifier.parameters()}
    assert len(body["params"]) == 2
    linear = nn.Linear(3, 2)  # the linear modes: the whole model is the final layer
    (only,) = model_param_groups(linear, 1e-3, 10.0)
    assert only["lr"] == pytest.approx(1e-2)

    out = ["--out", str(tmp_path / "x")]
    cfg = parse_args(["-l", "LL-R", "-g", "cpu", *out])
    assert cfg.classifier_lr_mult == 10 and cfg.hyper.delta_rel == 0.5
    cfg = parse_args(["-l", "LL-Cp", "-g", "cpu", "--classifier-lr-mult", "2", "--delta-rel", "0.3", *out])
    assert cfg.classifier_lr_mult == 2 and cfg.hyper.delta_rel == 0.3
    assert parse_args(["-l", "EM", "-g", "cpu", *out]).classifier_lr_mult == 1
    assert parse_args(["-l", "GR", "-g", "cpu", *out]).classifier_lr_mult == 10
    assert main(["-l", "LL-R", "-g", "cpu", "--delta-rel", "150", *out]) == 2
    with pytest.raises(UserError, match="--classifier-lr-mult"):
        parse_args(["-l", "LL-R", "-g", "cpu", "--classifier-lr-mult", "0", *out])


@pytest.mark.parametrize("name, state", [("LL-Cp", "corrected"), ("GR", "mu")])
def test_ctrl_c_and_resume_equals_an_uninterrupted_run(small_digits, tmp_path, monkeypatch, name, state):
    """Stopped by Ctrl-C at the start of epoch 3 (after epoch 2's corrections / schedule step), then resumed."""
    kind = LargeLoss if name == "LL-Cp" else GRLoss
    original = kind.start_epoch

    def ctrl_c_at_epoch_3(self, epoch, score_train):
        if epoch == 3:
            raise KeyboardInterrupt
        original(self, epoch, score_train)

    def flags(out):
        return ["-g", "cpu", "-l", name, "--patience", "0", "--epochs", "4", "--data-dir", str(small_digits),
                "--out", str(out)]

    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    with monkeypatch.context() as patch:
        patch.setattr(kind, "start_epoch", ctrl_c_at_epoch_3)
        assert main(flags(stopped)) == 130
    saved = load_checkpoint(stopped / LAST)
    assert saved["train_state"]["epoch"] == 2
    if name == "LL-Cp":
        assert saved["loss_state"]["corrected"].any()  # epoch 2 corrected entries; they are in last.pt
    else:
        assert saved["loss_state"]["mu"].item() == pytest.approx(gr_schedule(2, 4)["mu"])
    assert json.loads((stopped / "results.json").read_text())["status"] == "interrupted"
    assert main(["--resume", str(stopped), "-g", "cpu"]) == 0
    assert main(flags(straight)) == 0
    assert [r["epoch"] for r in drop_time(stopped)] == [1, 2, 3, 4]
    assert drop_time(stopped) == drop_time(straight)
    resumed, uninterrupted = (load_checkpoint(run / LAST)["loss_state"][state] for run in (stopped, straight))
    assert torch.equal(resumed, uninterrupted)


def drop_time(run_dir) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "time_s"}
            for record in json.loads((run_dir / "results.json").read_text())["epochs"]]


def test_every_new_loss_is_in_the_help():
    from cli import build_parser

    text = build_parser().format_help()
    for name in EPOCH_1_BEYOND:
        assert f"{name}:" in text
    assert "--delta-rel" in text and "--classifier-lr-mult" in text



# One row of logits (-1.5, -0.2, 0.4, 1.3, 2.0, 0.7): positive, unknown x 4, observed negative.
GRAD_LOGITS = [-1.5, -0.2, 0.4, 1.3, 2.0, 0.7]
GRAD_TARGETS = torch.tensor([[1.0, 0, 0, 0, 0, -1]])


def _gradient(name: str, epoch: int = 1) -> list[float]:
    logits = torch.tensor([GRAD_LOGITS], dtype=torch.float64, requires_grad=True)
    loss = create_loss(name, HP, 1, 6)
    loss.start_epoch(epoch, lambda: None)
    loss(logits, GRAD_TARGETS.double(), torch.tensor([0]))["main"].backward()
    return logits.grad[0].tolist()


def _hand_gradient(positive, unknown, negative) -> list[float]:
    """d loss / d logit per entry, from the per-entry derivatives in p, divided by B x C = 6."""
    ps = [sig(z) for z in GRAD_LOGITS]
    rule = [positive] + [unknown] * 4 + [negative]
    return [f(p) / 6 for f, p in zip(rule, ps)]


def test_gr_gradient_treats_k_and_v_as_constants():
    """GR's k(p) and v(p) are computed on the detached p: only L2 and L3 carry the gradient (dp/dz = p(1 - p))."""
    s = gr_schedule(2, 3)  # epoch 2 of 3: w 2/3, b -2, mu .7, sigma 1
    k = lambda p: sig(s["w"] * p + s["b"])  # noqa: E731
    v = lambda p: math.exp(-(p - s["mu"]) ** 2 / (2 * s["sigma"] ** 2))  # noqa: E731
    expected = _hand_gradient(
        lambda p: -(1 - p) * p / (p + 1e-7),
        # d/dz (1 - p^q2)/q2 = -p^q2 (1 - p); d/dz p (q3 = 1) = p (1 - p)
        lambda p: v(p) * (k(p) * -p ** 0.01 * (1 - p) + (1 - k(p)) * p * (1 - p)),
        lambda p: p * (1 - p) / (1 - p + 1e-7))
    assert _gradient("GR", epoch=2) == pytest.approx(expected, rel=1e-6)


def test_focal_and_asl_gradients_treat_the_focusing_weights_as_constants():
    """The authors' AsymmetricLoss detaches (1 - p)^gamma_pos and p_m^gamma_neg (disable_torch_grad_focal_loss)."""
    focal = _hand_gradient(lambda p: -(1 - p) ** 2 * (1 - p), lambda p: p ** 2 * p, lambda p: p ** 2 * p)
    assert _gradient("focal") == pytest.approx(focal, rel=1e-6)
    # ASL: gamma_pos 0; negatives on p_m = p - .05: d/dz -log(1 - p_m) = p (1 - p) / (1 - p_m)
    shifted = lambda p: (p - .05) ** 4 * p * (1 - p) / (1 - p + .05)  # noqa: E731
    assert _gradient("ASL") == pytest.approx(_hand_gradient(lambda p: -(1 - p), shifted, shifted), rel=1e-6)


def test_splc_threshold_is_tau_0_6():
    """An unknown entry just above p = .6 is corrected at epoch 2, one just below is not."""
    above, below = math.log(.601 / .399), math.log(.599 / .401)
    logits = torch.tensor([[above, below]])
    loss = create_loss("SPLC", HP, 1, 2)
    loss.start_epoch(2, lambda: None)
    value = loss(logits, torch.zeros(1, 2), INDEX[:1])["main"].item()
    corrected = (1 - .601) ** 2 * -ln(.601)  # trained as a positive, without the margin
    negative = .599 ** 2 * -ln(1 - .599)
    assert value == pytest.approx((corrected + negative) / 2, rel=1e-5)
