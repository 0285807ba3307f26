"""Every registered loss: hand-derived values (the papers' formulas written out on a 2 x 3 batch),
finite gradients at |logit| 30, and the stateful machinery of ROLE and EM_APL."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_losses_beyond import EPOCH_1_BEYOND

from config import LossHyper
from datasets import training_targets
from errors import UserError
from losses import LOSSES, create_loss
from methods.apl import EmAplLoss, select_pseudo_negatives
from methods.vlpl import VLPLLoss


def L(x: float) -> float:
    """The references' neg_log on a scalar."""
    return -math.log(x + 1e-5)


def H(p: float) -> float:
    return p * L(p) + (1 - p) * L(1 - p)


LN3 = math.log(3.0)
# sigmoid: row 0 -> (.75, .25, .5), row 1 -> (.5, .25, .75)
LOGITS = [[LN3, -LN3, 0.0], [0.0, -LN3, LN3]]
OBS = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32)
FULL = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32)
VIEW_TARGETS = {view: torch.from_numpy(training_targets(OBS, FULL, view).astype(np.float32))
                for view in ("observed", "full", "true_negatives")}
HP = LossHyper(alpha=0.1, beta=0.4, warmup_epochs=1, ls_coef=0.1, expected_pos=2.0, epochs=3)
INDEX = torch.tensor([0, 1])
REG = 0.25 / 9  # (mean row sum 1.5 - k 2)^2 / C^2

LS = lambda hit, miss: 0.9 * L(hit) + 0.1 * L(miss)  # noqa: E731  label-smoothed log loss

EXPECTED = {  # loss name -> total of all terms, written entry by entry
    "bce": (L(.75) + L(.25) + L(.5) + L(.5) + L(.75) + L(.75)) / 6,
    "bce_ls": (LS(.75, .25) + LS(.25, .75) + L(.5) + L(.5) + LS(.75, .25) + LS(.75, .25)) / 6,
    "iun": (L(.75) + 0 + L(.5) + L(.5) + L(.75) + L(.75)) / 6,
    "iu": (L(.75) + L(.75)) / 6,
    # row 0: positive .75 over unknown .25, .5 -> .5 + .75; row 1: positive .75 over .5, .25 -> .75 + .5
    "pr": (0.5 + 0.75 + 0.75 + 0.5) / 6,
    "an": (L(.75) + L(.75) + L(.5) + L(.5) + L(.75) + L(.75)) / 6,
    "an_ls": (LS(.75, .25) + LS(.75, .25) + L(.5) + L(.5) + LS(.75, .25) + LS(.75, .25)) / 6,
    "wan": (L(.75) + L(.75) / 2 + L(.5) / 2 + L(.5) / 2 + L(.75) / 2 + L(.75)) / 6,
    "epr": (L(.75) + L(.75)) / 6 + REG,
    "EM": (L(.75) - 0.1 * H(.25) - 0.1 * H(.5) - 0.1 * H(.5) - 0.1 * H(.25) + L(.75)) / 6,
    # before any pseudo-label EM_APL is EM
    "EM_APL": (L(.75) - 0.1 * H(.25) - 0.1 * H(.5) - 0.1 * H(.5) - 0.1 * H(.25) + L(.75)) / 6,
    # the losses beyond the references at epoch 1; their later epochs: tests/test_losses_beyond.py
    **EPOCH_1_BEYOND,
}


def _build(name: str, num_examples: int = 2):
    loss = create_loss(name, HP, num_examples, 3)
    loss.attach_train_labels(VIEW_TARGETS["observed"] if num_examples == 2 else torch.zeros(num_examples, 3))
    return loss


@pytest.mark.parametrize("name", sorted(set(EXPECTED)))
def test_hand_values(name):
    loss = _build(name)
    terms = loss(torch.tensor(LOGITS), VIEW_TARGETS[LOSSES[name].label_view], INDEX)
    assert sum(terms.values()).item() == pytest.approx(EXPECTED[name], rel=1e-4)
    # the terms' names are what metrics.jsonl records (train_terms)
    assert set(terms) == ({"main", "reg"} if name == "epr" else {"main"})


# Row 0's unknown entry at p = .25 made an observed negative: every loss below trains it as
# -log(1 - p) (the references' neg_log), in place of its unknown term.
OBSERVED_NEGATIVE = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
WITH_NEGATIVE = {
    "iu": (L(.75) + L(.75) + L(.75)) / 6,
    # pr ranks the positive over unknown entries only: row 0 keeps .75 (over .5), plus the negative's L(.75)
    "pr": (0.75 + L(.75) + 0.75 + 0.5) / 6,
    "an": EXPECTED["an"],  # AN already took the entry for a negative
    "epr": (L(.75) + L(.75) + L(.75)) / 6 + REG,
    "EM": EXPECTED["EM"] + (0.1 * H(.25) + L(.75)) / 6,
    "EM_APL": EXPECTED["EM"] + (0.1 * H(.25) + L(.75)) / 6,  # before its first pseudo-label, EM
}


@pytest.mark.parametrize("name", sorted(WITH_NEGATIVE))
def test_observed_negatives_train_as_negatives(name):
    terms = _build(name)(torch.tensor(LOGITS), OBSERVED_NEGATIVE, INDEX)
    assert sum(terms.values()).item() == pytest.approx(WITH_NEGATIVE[name], rel=1e-4)


def test_role_trains_an_observed_negative_as_a_negative_of_both_f_and_g():
    loss = _build("role")
    with torch.no_grad():
        loss.label_logits.zero_()  # q = .5 everywhere
    with_negative = loss(torch.tensor(LOGITS), OBSERVED_NEGATIVE, INDEX)["main"].item()
    without = loss(torch.tensor(LOGITS), VIEW_TARGETS["observed"], INDEX)["main"].item()
    assert with_negative - without == pytest.approx(0.5 * (L(.75) + L(.5)) / 6, rel=1e-4)  # p = .25, q = .5


def test_every_registered_loss_has_a_hand_value():
    # role: test_role_hand_value; EM_PL, EM_PL_ASL: tests/test_vlpl.py; PU: tests/test_pu.py; GPR: tests/test_gpr.py
    assert set(LOSSES) - set(EXPECTED) == {"role", "EM_PL", "EM_PL_ASL", "PU", "GPR"}


def test_role_hand_value():
    loss = _build("role")
    with torch.no_grad():
        loss.label_logits.zero_()  # estimates q = .5 everywhere: L(q) = L(1 - q) = L(.5)
    terms = loss(torch.tensor(LOGITS), VIEW_TARGETS["observed"], INDEX)
    observed = 0.5 * (L(.75) + L(.5)) * 2
    # per entry 1/2 (q L(p) + (1-q) L(1-p) + p L(q) + (1-p) L(1-q)) with q = .5
    cross = sum(0.5 * (0.5 * L(p) + 0.5 * L(1 - p) + L(.5)) for p in (.75, .25, .5, .5, .25, .75))
    assert terms["main"].item() == pytest.approx((observed + cross) / 6, rel=1e-4)
    assert terms["reg"].item() == pytest.approx(REG, rel=1e-4)  # q rows also sum to 1.5


def test_em_apl_soft_negative_hand_value():
    loss = _build("EM_APL")
    loss.pseudo[0, 1] = True  # row 0, p = .25, soft target s = .2
    loss.soft_targets[0, 1] = 0.2
    value = sum(loss(torch.tensor(LOGITS), VIEW_TARGETS["observed"], INDEX).values()).item()
    soft = 0.4 * (0.2 * L(.25) + 0.8 * L(.75))
    assert value == pytest.approx((L(.75) + soft - 0.1 * H(.5) - 0.1 * H(.5) - 0.1 * H(.25) + L(.75)) / 6, rel=1e-4)


@pytest.mark.parametrize("name", list(LOSSES))
def test_registry_finite_gradients_at_large_logits_in_every_phase(name):
    """Each loss through every epoch of a run (warm-up, then its pseudo-label phases), at |logit| 30."""
    torch.manual_seed(0)
    num, hp = 4, dataclasses.replace(HP, partial=0.34, beta_neg=0.5)  # VLPL: one pseudo-negative per view
    loss = create_loss(name, hp, num, 3)
    view = LOSSES[name].label_view
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    if view != "observed":
        targets = torch.where(targets == 0, -1.0, targets)
    loss.attach_train_labels(targets)
    if loss.needs_clip_scores:  # each image's cosines, for every crop it is scored on (AEVLP's DAMP: 17)
        cosines = torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.3, 0.2], [0.2, 0.1, 0.3], [0.3, 0.1, 0.2]])
        loss.set_clip_cosines(cosines.repeat(max(loss.crop_flips, 1), 1))
    logits = torch.tensor([[30.0, -30, 30], [-30, 30, -30], [30, 30, -30], [-30, -30, 30]], requires_grad=True)
    # a loss may run the model again on the images (PU's MixUp): a linear model with |logit| up to 30
    model = torch.nn.Linear(3, 3)
    images = 10 * torch.sign(logits.detach())
    score_train = lambda: torch.sigmoid(logits.detach())  # noqa: E731
    for epoch in range(1, hp.epochs + 1):
        loss.start_epoch(epoch, score_train)
        logits.grad = None
        loss.zero_grad()
        terms = {**loss(logits, targets, torch.arange(num)),
                 **loss.extra_terms(model, images, logits, targets, torch.arange(num))}
        assert terms and all(t.shape == () for t in terms.values())
        total = sum(terms.values())
        assert torch.isfinite(total), f"epoch {epoch}"
        total.backward()
        assert torch.isfinite(logits.grad).all(), f"epoch {epoch}"
        for param in loss.parameters():
            assert torch.isfinite(param.grad).all(), f"epoch {epoch}"
        for param in model.parameters():  # reached only by a loss that runs the model again
            assert param.grad is None or torch.isfinite(param.grad).all(), f"epoch {epoch}"
        model.zero_grad(set_to_none=True)
    if isinstance(loss, EmAplLoss):  # the phases ran: pseudo-labels exist
        assert loss.pseudo.any()
    if isinstance(loss, VLPLLoss):
        assert loss.active and (loss.pseudo == 1).any() and (loss.pseudo == -1).any()


def test_role_estimator_init_lr_and_index():
    torch.manual_seed(0)
    loss = create_loss("role", HP, 2, 3)
    loss.attach_train_labels(VIEW_TARGETS["observed"])
    q = loss.estimated_labels()
    assert q[0, 0].item() == pytest.approx(0.995) and q[1, 2].item() == pytest.approx(0.995)
    unknown = q[VIEW_TARGETS["observed"] == 0]
    assert ((unknown > 0.4) & (unknown < 0.6)).all()
    groups = loss.param_groups(1e-4)
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[0]["params"][0] is loss.label_logits
    assert "label_logits" in loss.state_dict()
    with pytest.raises(UserError, match="example index"):
        loss(torch.tensor(LOGITS), VIEW_TARGETS["observed"], None)


def test_stateless_losses_have_no_param_groups():
    assert _build("an").param_groups(1e-3) == []


def test_apl_selection_per_class():
    scores = torch.tensor([[0.3, 0.9], [0.1, 0.2], [0.2, 0.1], [0.05, 0.5], [0.4, 0.3]])
    candidates = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    chosen = select_pseudo_negatives(scores, candidates, torch.tensor([2, 1]))
    # class 0: candidates rows 0,1,2,4 (scores .3 .1 .2 .4): the two lowest are rows 1, 2 (row 3 is not a candidate)
    # class 1: candidates rows 0,1,3,4 (scores .9 .2 .5 .3): the lowest is row 1 (row 2 is not a candidate)
    expected = torch.tensor([[0, 0], [1, 1], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    assert torch.equal(chosen, expected)
    # asking for more than there are candidates takes them all, never a non-candidate
    everything = select_pseudo_negatives(scores, candidates, torch.tensor([10, 10]))
    assert torch.equal(everything, candidates)


def test_apl_schedule_and_state():
    n = 10
    targets = torch.zeros(n, 2)
    targets[0, 0] = targets[1, 1] = 1  # 9 unknown entries per class
    loss = EmAplLoss(n, 2, alpha=0.1, beta=0.4, warmup_epochs=2, epochs=5)
    loss.attach_train_labels(targets)
    assert loss.per_round.tolist() == [2, 2]  # floor(0.9 x 9 / 3)
    scores = torch.linspace(0.05, 0.95, n).unsqueeze(1).repeat(1, 2)
    calls = []

    def score_train():
        calls.append(1)
        return scores

    for epoch in (1, 2):
        loss.start_epoch(epoch, score_train)
    assert not calls and not loss.pseudo.any()  # warm-up: plain EM, no scoring pass
    loss.start_epoch(3, score_train)
    # class 0: row 0 is observed positive, so rows 1, 2; class 1: rows 0, 2
    assert loss.pseudo[:, 0].nonzero().flatten().tolist() == [1, 2]
    assert loss.pseudo[:, 1].nonzero().flatten().tolist() == [0, 2]
    assert loss.soft_targets[1, 0].item() == pytest.approx(scores[1, 0].item())
    loss.start_epoch(4, score_train)  # the next lowest still-unknown entries
    assert loss.pseudo[:, 0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert not loss.pseudo[targets == 1].any()
    restored = EmAplLoss(n, 2, alpha=0.1, beta=0.4, warmup_epochs=2, epochs=5)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.pseudo, loss.pseudo) and torch.equal(restored.soft_targets, loss.soft_targets)


def test_apl_refuses_warmup_past_the_run():
    with pytest.raises(UserError, match="--warmup-epochs"):
        EmAplLoss(4, 2, alpha=0.1, beta=0.4, warmup_epochs=5, epochs=5)


def test_full_label_losses_refuse_observed_only_data():
    with pytest.raises(UserError, match="full train labels"):
        training_targets(OBS, None, LOSSES["bce_ls"].label_view)
    with pytest.raises(UserError, match="full train labels"):
        training_targets(OBS, None, LOSSES["iun"].label_view)


def test_iun_help_says_it_reads_true_negatives():
    assert "TRUE NEGATIVES" in LOSSES["iun"].help and LOSSES["iun"].label_view == "true_negatives"
    assert LOSSES["bce"].label_view == LOSSES["bce_ls"].label_view == "full"


def test_apl_selection_matches_a_per_class_argsort():
    gen = torch.Generator().manual_seed(3)
    scores, candidates = torch.rand(50, 4, generator=gen), torch.rand(50, 4, generator=gen) > 0.3
    counts = torch.tensor([0, 5, 12, 50])
    chosen = select_pseudo_negatives(scores, candidates, counts)
    for c in range(4):
        rows = candidates[:, c].nonzero().flatten()
        lowest = rows[scores[rows, c].argsort()][: counts[c]]
        assert set(chosen[:, c].nonzero().flatten().tolist()) == set(lowest.tolist())
