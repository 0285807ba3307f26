"""ROLE (Cole et al. CVPR 2021): regularised online label estimation.

A learned label matrix g (N_train x C, stored as logits) is trained jointly with
the classifier f. Per batch, with p = f's probabilities and q = sigmoid(g[index]):

    loss = 1/2 (pos(p) + pos(q))                      observed positives, -log
         + 1/2 (BCE(p <- q.detach) + BCE(q <- p.detach))   every entry
         (summed entry-wise, / (B x C), as every loss)
         + 1/2 (EPR(p) + EPR(q))                      expected-positive regulariser

The estimator is initialised as the reference does: unknown logits uniform in
(-logit(0.6), logit(0.6)), observed positives logit(0.995), observed negatives
logit(0.005); it learns at 10x the classifier's learning rate. Rows are addressed
by the example index carried in each batch; the matrix is a parameter, so
`state_dict()` checkpoints it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from config import LossHyper
from errors import UserError
from methods.base import (
    SPMLLoss,
    Terms,
    expected_positive_reg,
    neg_log,
    per_code,
    reduce,
)

LR_MULT = 10.0  # the estimator's learning rate relative to the classifier's (Cole et al.)
INIT_UNKNOWN = 0.6  # unknown entries start with probabilities uniform in (0.4, 0.6)
INIT_POSITIVE = 0.995
INIT_NEGATIVE = 0.005


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def loss_role(logits: torch.Tensor, targets: torch.Tensor, estimates: torch.Tensor, expected_pos: float) -> Terms:
    """ROLE's terms for a batch; `estimates` are the label estimator's probabilities q (B, C)."""
    p = torch.sigmoid(logits)
    q = estimates
    zero = torch.zeros_like(p)
    # An observed negative (--num-neg > 0; the reference has none) is a negative for both f and g.
    observed = 0.5 * (per_code(targets, neg_log(p), zero, neg_log(1 - p))
                      + per_code(targets, neg_log(q), zero, neg_log(1 - q)))
    q_fixed, p_fixed = q.detach(), p.detach()
    cross = 0.5 * (q_fixed * neg_log(p) + (1 - q_fixed) * neg_log(1 - p)
                   + p_fixed * neg_log(q) + (1 - p_fixed) * neg_log(1 - q))
    return {"main": reduce(observed + cross),
            "reg": 0.5 * (expected_positive_reg(p, expected_pos) + expected_positive_reg(q, expected_pos))}


class RoleLoss(SPMLLoss):
    """ROLE with its label estimator; indexed by the example index of each batch."""

    carries_state_across_phases = True  # linear_init fine-tunes from the linear phase's estimates, as Cole's code

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "RoleLoss":
        return cls(num_examples, num_classes, hp.expected_pos)

    def __init__(self, num_examples: int, num_classes: int, expected_pos: float):
        super().__init__()
        self.expected_pos = expected_pos
        bound = logit(INIT_UNKNOWN)
        self.label_logits = nn.Parameter(bound * (2 * torch.rand(num_examples, num_classes) - 1))

    @torch.no_grad()
    def attach_train_labels(self, targets: torch.Tensor) -> None:
        if targets.shape != self.label_logits.shape:
            raise UserError(f"ROLE's label matrix is {tuple(self.label_logits.shape)} but the train labels are "
                            f"{tuple(targets.shape)}")
        targets = targets.to(self.label_logits.device)
        self.label_logits[targets == 1] = logit(INIT_POSITIVE)
        self.label_logits[targets == -1] = logit(INIT_NEGATIVE)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [self.label_logits], "lr": LR_MULT * lr}]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None) -> Terms:
        if index is None or index.dtype not in (torch.int64, torch.int32) or index.shape != logits.shape[:1]:
            raise UserError("role needs the example index of every training row (a batch of (input, labels, index)); "
                            "use the datasets of datasets.py or modes/linear.py, which carry it")
        estimates = torch.sigmoid(self.label_logits[index])
        return loss_role(logits, targets, estimates, self.expected_pos)

    def estimated_labels(self) -> torch.Tensor:
        """The current label estimates, (N_train, C) probabilities."""
        return torch.sigmoid(self.label_logits.detach())

    def extra_repr(self) -> str:
        return f"label matrix {tuple(self.label_logits.shape)}, expected_pos={self.expected_pos}, lr x{LR_MULT:g}"
