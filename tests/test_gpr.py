"""AEVLP's GPR loss: hand values of every branch, the schedule with the authors' per-dataset ranges at the
first, a middle and the last epoch, gradients, the equality with GR + the regulariser without pseudo-labels,
and the GR / GPR flags."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cli import parse_args
from config import LossHyper
from errors import UserError
from losses import create_loss
from methods.aevlp import loss_gpr
from methods.base import expected_positive_reg
from methods.gr import gr_schedule, loss_gr
from presets import AEVLP_SETTINGS

EPS = 1e-7  # the authors' neg_log


def nl(x: float) -> float:
    return -math.log(x + EPS)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def v_of(p: float, mu: float, sigma: float) -> float:
    return math.exp(-((p - mu) ** 2) / (2 * sigma ** 2))


def gr_unknown(p: float, w: float, b: float, mu: float, sigma: float, q2: float, q3: float) -> float:
    k = sig(w * p + b)
    return v_of(p, mu, sigma) * (k * (1 - p ** q2) / q2 + (1 - k) * (1 - (1 - p) ** q3) / q3)


def test_schedule_with_coco_ranges_at_the_first_a_middle_and_the_last_epoch():
    """(w, b) one epoch behind (mu, sigma): at the last of 8 epochs w, b have not reached 10, -8."""
    coco = AEVLP_SETTINGS["coco"]
    at = lambda epoch: gr_schedule(epoch, 8, coco["gr_beta"], coco["gr_alpha"])  # noqa: E731
    assert at(1) == pytest.approx({"w": 0.0, "b": -2.0, "mu": 0.5375, "sigma": 1.8125})
    assert at(4) == pytest.approx({"w": 3.75, "b": -4.25, "mu": 0.65, "sigma": 1.25})
    assert at(8) == pytest.approx({"w": 8.75, "b": -7.25, "mu": 0.8, "sigma": 0.5})
    loss = create_loss("GPR", LossHyper(epochs=8, pseudo_labels="off", **coco), 2, 3)
    for epoch in (1, 4, 8):
        loss.start_epoch(epoch, lambda: None)
        assert {name: getattr(loss, name).item() for name in ("w", "b", "mu", "sigma")} == pytest.approx(at(epoch))


# One row per branch, p chosen so that v lands where each case needs it (mu .8, sigma .5, the last epoch):
# p = .75, .5, .25, .01 -> v = .995, .835, .546, .287
P = torch.tensor([[0.75, 0.5, 0.25, 0.01]])
W, B, MU, SIGMA, Q2, Q3 = 8.75, -7.25, 0.8, 0.5, 0.01, 1.5
LAM, RHO, REG, K = (0.7, 0.2), 0.9, 0.05, 1.5


def _loss(targets, pseudo, lam=LAM):
    logits = torch.logit(P.double()).float().requires_grad_()
    terms = loss_gpr(logits, torch.tensor(targets), None if pseudo is None else torch.tensor(pseudo),
                     W, B, MU, SIGMA, Q2, Q3, lam, RHO, REG, K)
    return logits, terms


def _pseudo_positive(p: float) -> float:
    clamped = min(max(v_of(p, MU, SIGMA), 1 - LAM[0]), 1 - LAM[1])
    return (1 - clamped) * (RHO * nl(p) + (1 - RHO) * nl(1 - p))


def test_every_branch_by_hand():
    p = P[0].tolist()
    # the observed positive ignores its q = 1; q = 0 is GR's unknown term; three pseudo-positives, one in each
    # part of the clamp: v .835 above 1 - lambda2 = .8 (weight lambda2), .546 inside (1 - v), .287 below 1 -
    # lambda1 = .3 (weight lambda1)
    assert (1 - 0.8, 1 - v_of(p[2], MU, SIGMA), 0.7) == pytest.approx(
        tuple(1 - min(max(v_of(x, MU, SIGMA), 0.3), 0.8) for x in p[1:]), rel=1e-6)
    _, terms = _loss([[1.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]])
    expected = nl(p[0]) + sum(_pseudo_positive(x) for x in p[1:])
    assert terms["main"].item() == pytest.approx(expected / 4, rel=1e-5)
    _, terms = _loss([[1.0, 0.0, 0.0, -1.0]], [[0.0, 0.0, 1.0, 1.0]])
    # an unknown with q = 0: GR's term; an observed negative (q ignored): v (-log(1 - p))
    expected = nl(p[0]) + gr_unknown(p[1], W, B, MU, SIGMA, Q2, Q3) + _pseudo_positive(p[2]) + \
        v_of(p[3], MU, SIGMA) * nl(1 - p[3])
    assert terms["main"].item() == pytest.approx(expected / 4, rel=1e-5)
    assert terms["reg"].item() == pytest.approx(REG * (sum(p) - K) ** 2 / 16, rel=1e-5)


def test_gradients_by_hand_weights_and_k_carry_none_the_regulariser_does():
    """d/dz of each entry with v and k constants; the regulariser's through every p."""
    logits, terms = _loss([[1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 1.0]])
    sum(terms.values()).backward()
    p = P[0].double()
    dp = p * (1 - p)  # dp/dz
    reg = REG * 2 * (p.sum() - K) / 16 * dp
    weight = lambda x: 1 - min(max(v_of(x, MU, SIGMA), 0.3), 0.8)  # noqa: E731
    pseudo = [weight(x) * (RHO * -1 / (x + EPS) + (1 - RHO) / (1 - x + EPS)) for x in p.tolist()]
    k = torch.sigmoid(W * p + B)
    v = torch.tensor([v_of(x, MU, SIGMA) for x in p.tolist()], dtype=torch.float64)
    gr = v * (k * -(p ** (Q2 - 1)) + (1 - k) * (1 - p) ** (Q3 - 1))  # d/dp of GR's unknown term, k and v fixed
    main = torch.stack([-1 / (p[0] + EPS), torch.tensor(pseudo[1]), gr[2], torch.tensor(pseudo[3])]) * dp / 4
    assert logits.grad[0].double() == pytest.approx((main + reg).tolist(), rel=1e-4)


def test_without_pseudo_labels_it_is_gr_plus_the_regulariser():
    """On single-positive labels, at every epoch of a run with AEVLP's COCO ranges."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 3
    targets = torch.zeros(6, 5)
    targets[torch.arange(6), torch.randint(0, 5, (6,))] = 1
    hp = LossHyper(epochs=4, pseudo_labels="off", expected_pos=2.0, **AEVLP_SETTINGS["coco"])
    gpr, gr = create_loss("GPR", hp, 6, 5), create_loss("GR", hp, 6, 5)
    assert not gpr.needs_clip_scores and gpr.crop_flips == 0
    for epoch in range(1, 5):
        gpr.start_epoch(epoch, lambda: None)
        gr.start_epoch(epoch, lambda: None)
        terms = gpr(logits, targets, torch.arange(6))
        assert torch.equal(terms["main"], gr(logits, targets, torch.arange(6))["main"])
        assert terms["reg"].item() == pytest.approx(0.001 * expected_positive_reg(torch.sigmoid(logits), 2.0).item())
    # GR's own numbers: the same function with its defaults (methods/gr.py), q2 q3 from the flags
    w, b, mu, sigma = gr_schedule(4, 4, hp.gr_beta, hp.gr_alpha).values()
    assert torch.equal(terms["main"], loss_gr(logits, targets, w, b, mu, sigma, *hp.gr_q2q3)["main"])


def test_gr_takes_the_shared_schedule_flags(tmp_path):
    out = ["-g", "cpu", "--out", str(tmp_path / "run")]
    cfg = parse_args(["-l", "GR", "--gr-beta", "0", "10", "-2", "-8", "--gr-alpha", "0.5", "2", "0.8", "0.5",
                      "--gr-q2q3", "0.01", "1.5", *out])
    loss = create_loss("GR", dataclasses.replace(cfg.hyper, epochs=8), 2, 3)
    loss.start_epoch(8, lambda: None)
    assert (loss.w.item(), loss.b.item(), loss.q3) == pytest.approx((8.75, -7.25, 1.5))
    # GR's defaults are the GR authors'; GPR's on a benchmark are the AEVLP authors'
    assert parse_args(["-l", "GR", *out]).hyper.gr_beta == (0.0, 2.0, -2.0, -2.0)
    coco = parse_args(["-l", "GPR", "-d", "coco", "--data-dir", str(tmp_path), *out])
    assert (coco.hyper.gr_beta, coco.hyper.gpr_lam, coco.hyper.damp_neg_ratio, coco.clip_model) == \
        ((0.0, 10.0, -2.0, -8.0), (0.7, 0.5), 0.3, "ViT-B-16")
    assert coco.classifier_lr_mult == 10 and parse_args(["-l", "EM_PL", *out]).clip_model == "ViT-L-14-336"


@pytest.mark.parametrize("argv, message", [
    (["--gr-alpha", "0.5", "0", "0.8", "0.5"], r"SIGMA0 and SIGMAT of v\(p\) must be > 0"),
    (["--gpr-lam", "0.2", "0.7"], "pass LAMBDA1 >= LAMBDA2"),
])
def test_ranges_whose_parts_constrain_each_other(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        parse_args(["-l", "GPR", "-g", "cpu", *argv, "--out", str(tmp_path / "run")])


def test_more_top_k_or_graph_neighbours_than_classes_is_refused():
    with pytest.raises(UserError, match="--damp-top-k 4 is more than the dataset's 3 classes"):
        create_loss("GPR", LossHyper(damp_top_k=4), 2, 3)
    with pytest.raises(UserError, match="--text-graph-topk 9 is more than"):
        create_loss("GPR", LossHyper(text_graph_topk=9), 2, 3)
