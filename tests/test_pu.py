"""PU-MLC's loss (Yuan et al. 2024): hand values of L_var and L_reg on tiny batches, the
temperature and re-balance rules, -1 == 0, the odd-batch MixUp, and runs on digits (single-positive
and the known-ratio protocol)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import slice_digits
from losses import LOSSES
from main import main
from methods.pu import (EPSILON, TEMPERATURE_FLOOR, PULoss, adaptive_temperature, mixup_halves,
                        pu_mixup_regulariser, pu_variational)
from preproc.generate_observed_labels import generate_observed_labels


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_(x: float) -> float:
    return math.log(x + EPSILON)


def log_var(x: float) -> float:
    """L_var's log: the authors' log(exp(log(x + eps)) + eps)."""
    return math.log(math.exp(math.log(x + EPSILON)) + EPSILON)


def pop_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


LOGITS = [[1.0, 0.0], [-1.0, 2.0], [0.0, 2.0]]
TARGETS = [[1.0, 0.0], [0.0, 0.0], [1.0, -1.0]]  # class 0: two positives; class 1: none


def test_variational_hand_value():
    alpha, gamma = 0.5, 0.55
    expected = 0.0
    for c in range(2):
        column = [row[c] for row in LOGITS]
        temp = min(alpha * pop_std(column), 1.0)
        q = [sig(z / temp) for z in column]
        mean_q = sum(q) / 3
        positives = [q[i] for i in range(3) if TARGETS[i][c] == 1]
        positive_term = sum(log_var(v) for v in positives) / len(positives) if positives else 0.0
        expected += mean_q ** gamma * log_var(mean_q) - positive_term
    value = pu_variational(torch.tensor(LOGITS), torch.tensor(TARGETS), alpha, gamma)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_saturated_sigmoids_take_the_authors_epsilons():
    """At z / T = -30 (q about 1e-13, common with T down to 0.01) the epsilons decide the value: L_var's
    logs are log(q + 2e-10), the MixUp soft targets sigmoid + 1e-10."""
    logits = torch.tensor([[-0.3, 0.0], [0.3, 0.0]])  # class 0: std .3, T = .01 at alpha 1/30: z / T = -30, 30
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    q = [sig(-30.0), sig(30.0)]
    expected = ((q[0] + q[1]) / 2) ** 0.5 * log_var((q[0] + q[1]) / 2) - log_var(q[0])
    expected += 0.5 ** 0.5 * log_var(0.5)  # class 1: equal logits, the floor temperature, q = .5
    assert pu_variational(logits, targets, 1 / 30, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # an unlabeled entry far below: its soft target is 1e-10, not 0 (log(0 + eps) vs log(2 eps))
    images, far = torch.tensor([[0.0], [0.0]]), torch.tensor([[-40.0], [-40.0]])
    value = pu_mixup_regulariser(lambda x: x, images, far, torch.zeros(2, 1), 0.5, torch.tensor([0]))
    assert value.item() == pytest.approx((log_(sig(-40.0) + EPSILON) - log_(0.5)) ** 2, rel=1e-6)


def test_mixup_draws_the_permutation_then_lam(monkeypatch):
    """The authors' order of draws on one generator: randperm(h), then Beta(alpha, alpha)."""
    import methods.pu as pu

    torch.manual_seed(3)
    perm = torch.randperm(3)
    lam = float(torch.distributions.Beta(0.3, 0.3).sample())
    drawn = []
    monkeypatch.setattr(pu, "pu_mixup_regulariser", lambda forward, images, logits, targets, lam, perm, whole:
                        drawn.append((lam, perm)) or torch.zeros(()))
    torch.manual_seed(3)
    PULoss(alpha=1.0, gamma=0.55, mix_alpha=0.3, reg_weight=1.0).extra_terms(
        torch.nn.Identity(), torch.zeros(6, 2), torch.zeros(6, 2), torch.zeros(6, 2), None)
    assert drawn[0][0] == lam and torch.equal(drawn[0][1], perm)


def test_temperature_clamps_at_one_and_at_the_floor_and_carries_no_gradient():
    logits = torch.tensor([[5.0, 0.3, 0.0], [-5.0, 0.3, 1.0]], requires_grad=True)
    temp = adaptive_temperature(logits, alpha=1.0)
    # std 5 -> 1 (clamped); std 0 -> the floor (the authors' code divides by zero); std .5 -> .5
    assert temp.tolist() == pytest.approx([1.0, TEMPERATURE_FLOOR, 0.5])
    assert not temp.requires_grad
    value = pu_variational(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]]), 1.0, 0.55)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_rebalance_factor_carries_no_gradient():
    logits = torch.tensor(LOGITS, requires_grad=True)
    pu_variational(logits, torch.tensor(TARGETS), 0.5, 0.85).backward()
    # the same formula written with w_c = mean(q_c)^gamma as a constant
    z = torch.tensor(LOGITS, requires_grad=True)
    q = torch.sigmoid(z / adaptive_temperature(z, 0.5))
    positive = (torch.tensor(TARGETS) == 1).float()
    w = q.mean(0).detach() ** 0.85
    manual = (w * torch.log(q.mean(0) + EPSILON)).sum() - (positive * torch.log(q + EPSILON)).sum(0)[0] / 2
    manual.backward()
    assert torch.allclose(logits.grad, z.grad, atol=1e-6)


def test_class_without_positive_has_only_the_unlabeled_term():
    logits = torch.tensor([[0.5], [-0.5]])
    value = pu_variational(logits, torch.zeros(2, 1), alpha=1.0, gamma=0.0)  # gamma 0: w = 1
    q = [sig(0.5 / 0.5), sig(-0.5 / 0.5)]
    assert value.item() == pytest.approx(log_var(sum(q) / 2), rel=1e-6)


def test_regulariser_hand_value_odd_batch_leaves_the_middle_out():
    images = torch.tensor([[0.4, -1.0], [float("nan"), float("nan")], [2.0, 0.5]])  # row 1: never mixed
    logits = torch.tensor(LOGITS)
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    lam = 0.25
    value = pu_mixup_regulariser(lambda x: 2 * x, images, logits, targets, lam, torch.tensor([0]))
    soft0 = [1.0, sig(0.0) + EPSILON]  # the authors' soft targets: sigmoid + eps, positives 1
    soft2 = [sig(0.0) + EPSILON, sig(2.0) + EPSILON]
    expected = 0.0
    for c in range(2):
        mixed_target = lam * soft0[c] + (1 - lam) * soft2[c]
        mixed_logit = 2 * (lam * images[0, c].item() + (1 - lam) * images[2, c].item())
        expected += (log_(mixed_target) - log_(sig(mixed_logit))) ** 2
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert [t.tolist() for t in mixup_halves(5)] == [[0, 1], [3, 4]]


def test_regulariser_applies_the_permutation_to_half_a():
    images = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    logits = torch.tensor([[0.2], [-0.7], [1.1], [0.0]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    lam = 0.6
    value = pu_mixup_regulariser(lambda x: x, images, logits, targets, lam, torch.tensor([1, 0]))
    soft = [1.0, sig(-0.7) + EPSILON, sig(1.1) + EPSILON, 1.0]
    expected = 0.0
    for k, a in enumerate([1, 0]):  # pairs (A[pi(k)], B[k]) = (1, 2), (0, 3)
        b = 2 + k
        gap = log_(lam * soft[a] + (1 - lam) * soft[b]) - log_(sig(lam * images[a, 0].item() + (1 - lam) * images[b, 0].item()))
        expected += gap ** 2 / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_observed_negative_trains_as_unknown():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    images = torch.randn(6, 4)
    logits = model(images)
    with_negatives = torch.tensor([[1.0, -1, 0], [0, 1, -1], [-1, -1, 1], [1, 0, 0], [0, -1, 0], [-1, 0, 1]])
    as_unknown = torch.where(with_negatives == -1, 0.0, with_negatives)
    loss = PULoss(alpha=1.0, gamma=0.55, mix_alpha=0.3, reg_weight=1.0)
    values = []
    for targets in (with_negatives, as_unknown):
        torch.manual_seed(1)  # the same lambda and permutation
        terms = {**loss(logits, targets, torch.arange(6)), **loss.extra_terms(model, images, logits, targets, None)}
        values.append({name: term.item() for name, term in terms.items()})
    assert values[0] == values[1] and set(values[0]) == {"main", "reg"}


def test_batch_of_one_and_zero_weight_skip_the_second_pass():
    def forbidden(_):
        raise AssertionError("the model must not run again")

    logits = torch.tensor([[0.3, -0.2]])
    loss = PULoss(1.0, 0.55, 0.3, 1.0)
    assert loss.extra_terms(forbidden, torch.zeros(1, 2), logits, torch.ones(1, 2), None)["reg"].item() == 0.0
    assert torch.isfinite(loss(logits, torch.ones(1, 2), None)["main"])  # std 0: the floor, no NaN
    off = PULoss(1.0, 0.55, 0.3, 0.0)
    assert off.extra_terms(forbidden, torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2), None)["reg"].item() == 0.0


def test_pu_registered_with_its_flags():
    assert "PU" in LOSSES and LOSSES["PU"].label_view == "observed"


def test_pu_trains_end_to_end_on_digits(small_digits, tmp_path):
    """The MixUp regulariser's second pass runs inside the training step and its gradient reaches the
    weights: with --reg-weight 0 the same seed trains to other scores (BatchNorm frozen, so that the second
    pass cannot change them through the running statistics alone)."""
    runs = {}
    for reg in ("1", "0"):
        out = tmp_path / f"reg{reg}"
        assert main(["-g", "cpu", "-l", "PU", "--epochs", "1", "--pu-alpha", "2", "--pu-gamma", "0.85",
                     "--reg-weight", reg, "--freeze-bn", "--data-dir", str(small_digits), "--out", str(out)]) == 0
        runs[reg] = json.loads((out / "results.json").read_text())
        assert runs[reg]["status"] == "completed"
    with_reg, without = runs["1"]["epochs"][0], runs["0"]["epochs"][0]
    assert set(with_reg["train_terms"]) == {"main", "reg"}
    assert with_reg["train_terms"]["reg"] > 0 and without["train_terms"]["reg"] == 0
    assert with_reg["train_loss"] == pytest.approx(sum(with_reg["train_terms"].values()), rel=1e-6)
    assert with_reg["val"] != without["val"] and with_reg["test"] != without["test"]
    hyper = runs["1"]["config"]["hyper"]
    assert (hyper["pu_alpha"], hyper["pu_gamma"], hyper["mix_alpha"], hyper["reg_weight"]) == (2.0, 0.85, 0.3, 1.0)


def test_pu_trains_on_the_known_ratio_protocol(digits_master, tmp_path):
    data = slice_digits(digits_master, tmp_path / "digits", 120, 60, copy_images=False)
    generate_observed_labels(data, seed=0, known_ratio=0.1)
    out = tmp_path / "run"
    assert main(["-g", "cpu", "-l", "PU", "--epochs", "1", "--data-dir", str(data), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["label_protocol"] == {"protocol": "known_ratio", "known_ratio": 0.1, "seed": 0}
