"""Robust losses for missing labels, single-positive mode: every unknown label is trained as
a negative, the loss itself being robust to the false negatives among them.

    hill   Hill (Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning
           with Missing Labels", 2021): positives focal-margin, (1 - p_m)^2 (-log p_m) with
           p_m = sigmoid(logit - 1); negatives (1.5 - p) p^2, whose weight falls for
           confident (possibly missing-positive) predictions
    SPLC   the same paper's self-paced loss correction: focal margin on positives, focal
           (gamma 2) on negatives; from the second epoch on, an unknown entry with
           p > 0.6 is trained as a positive (its loss, no margin)
    focal  focal loss (Lin et al., ICCV 2017) as the Hill paper runs it: gamma 2 on both sides
    ASL    asymmetric loss (Ridnik et al., ICCV 2021) as the Hill paper runs it:
           gamma_neg 4, gamma_pos 0, negatives shifted by the clip m = 0.05

Formulas as in the authors' code (xinyu1205/robust-loss-mlml, src/loss_functions/losses.py):
Hill and SPLC keep the gradient through their focusing weights, focal and ASL detach them
(AsymmetricLoss with disable_torch_grad_focal_loss=True) and clamp probabilities at 1e-8.
Their losses are summed over the batch; here, as every loss of spml, they are divided by
B x C (a constant scale). Observed negatives (-1) train as negatives and are never corrected.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from config import LossHyper
from methods.base import SPMLLoss, Terms, per_code, reduce

HILL_LAMBDA, HILL_MARGIN, HILL_GAMMA = 1.5, 1.0, 2.0  # the paper keeps lambda 1.5; margin 1, gamma 2
SPLC_TAU = 0.6  # probability above which SPLC takes an unknown label as a missing positive
SPLC_FIRST_EPOCH = 2  # the authors' change_epoch 1 counts epochs from 0: the correction starts with the second
FOCAL_GAMMA = 2.0
ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05
ASL_EPSILON = 1e-8


def focal_margin_positive(logits: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """(1 - p_m)^gamma (-log p_m), p_m = sigmoid(logit - margin); logsigmoid keeps it finite far out."""
    shifted = logits - margin
    return (1 - torch.sigmoid(shifted)) ** gamma * -F.logsigmoid(shifted)


def loss_hill(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    p = torch.sigmoid(logits)
    negative = (HILL_LAMBDA - p) * p ** 2
    return {"main": reduce(per_code(targets, focal_margin_positive(logits, HILL_MARGIN, HILL_GAMMA), negative, negative))}


def loss_splc(logits: torch.Tensor, targets: torch.Tensor, correct: bool) -> Terms:
    """SPLC; `correct`: the loss correction is on (unknown entries with p > tau count as positives)."""
    p = torch.sigmoid(logits)
    negative = p ** HILL_GAMMA * -F.logsigmoid(-logits)
    unknown = negative
    if correct:
        # a corrected entry keeps its logit: the authors shift the margin before correcting
        unknown = torch.where(p.detach() > SPLC_TAU, (1 - p) ** HILL_GAMMA * -F.logsigmoid(logits), negative)
    return {"main": reduce(per_code(targets, focal_margin_positive(logits, HILL_MARGIN, HILL_GAMMA), unknown,
                                    negative))}


def _asymmetric(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float, gamma_neg: float, clip: float) -> Terms:
    p = torch.sigmoid(logits)
    p_neg = torch.clamp(p - clip, min=0) if clip > 0 else p  # the probability shift: 1 - p_neg = min(1 - p + m, 1)
    weight_pos, weight_neg = (1 - p.detach()) ** gamma_pos, p_neg.detach() ** gamma_neg
    positive = weight_pos * -torch.log(p.clamp(min=ASL_EPSILON))
    negative = weight_neg * -torch.log((1 - p_neg).clamp(min=ASL_EPSILON))
    return {"main": reduce(per_code(targets, positive, negative, negative))}


def loss_focal(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    return _asymmetric(logits, targets, FOCAL_GAMMA, FOCAL_GAMMA, 0.0)


def loss_asl(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    return _asymmetric(logits, targets, ASL_GAMMA_POS, ASL_GAMMA_NEG, ASL_CLIP)


class SPLCLoss(SPMLLoss):
    """SPLC: knows the epoch, to start the correction with the second one."""

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "SPLCLoss":
        return cls()

    def __init__(self):
        super().__init__()
        self.epoch = 1

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        self.epoch = epoch  # a function of the epoch alone: a resumed run sets it again

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return loss_splc(logits, targets, self.epoch >= SPLC_FIRST_EPOCH)

    def extra_repr(self) -> str:
        return f"tau={SPLC_TAU}, from epoch {SPLC_FIRST_EPOCH}, margin={HILL_MARGIN}, gamma={HILL_GAMMA}"
