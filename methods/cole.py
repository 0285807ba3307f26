"""The losses of Cole et al. (CVPR 2021, "Multi-Label Learning from Single Positive Labels"),
computed as their code computes them: probabilities, `-log(x + 1e-5)`, sum / (B x C) plus the
regulariser; each a plain function of explicit tensors and named hyperparameters, registered in
`losses.py` (ROLE, which keeps a label matrix, is `methods/role.py`).

An observed negative (only present with --num-neg > 0 in preproc/generate_observed_labels.py) is
always trained as a negative, -log(1 - p).
"""
from __future__ import annotations

import torch

from methods.base import Terms, expected_positive_reg, neg_log, per_code, reduce


def loss_iu(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Ignore unknown: positives -log p, negatives -log(1 - p), unknown entries 0.

    With the `full` label view this is `bce`; with `true_negatives` it is `iun`.
    """
    p = torch.sigmoid(logits)
    return {"main": reduce(per_code(targets, neg_log(p), torch.zeros_like(p), neg_log(1 - p)))}


def loss_an(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Assume negative (Cole et al.): every unknown entry is a negative."""
    p = torch.sigmoid(logits)
    neg = neg_log(1 - p)
    return {"main": reduce(per_code(targets, neg_log(p), neg, neg))}


def smoothed(p: torch.Tensor, positive: bool, ls_coef: float) -> torch.Tensor:
    """Label-smoothed log loss toward one target: (1 - eps)(-log q) + eps(-log(1 - q))."""
    hit, miss = (p, 1 - p) if positive else (1 - p, p)
    return (1.0 - ls_coef) * neg_log(hit) + ls_coef * neg_log(miss)


def loss_ls(logits: torch.Tensor, targets: torch.Tensor, ls_coef: float) -> Terms:
    """AN with label smoothing (Cole et al.); with the `full` view it is `bce_ls`."""
    p = torch.sigmoid(logits)
    neg = smoothed(p, False, ls_coef)
    return {"main": reduce(per_code(targets, smoothed(p, True, ls_coef), neg, neg))}


def loss_wan(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Weighted AN (Cole et al.): the assumed-negative term is divided by C - 1."""
    p = torch.sigmoid(logits)
    neg = neg_log(1 - p)
    return {"main": reduce(per_code(targets, neg_log(p), neg / (logits.shape[1] - 1), neg))}


def loss_pr(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Positive ranking (Cole et al.): each observed positive i of an image pays
    sum over its unknown labels j of max(0, 1 - p_i + p_j); observed negatives -log(1 - p).

    Vectorised over a (B, C, C) margin tensor instead of the reference's double loop.
    """
    p = torch.sigmoid(logits)
    margins = torch.clamp(1.0 - p.unsqueeze(2) + p.unsqueeze(1), min=0)  # [b, i, j]
    ranking = (margins * (targets == 0).unsqueeze(1).to(p.dtype)).sum(dim=2)
    return {"main": reduce(per_code(targets, ranking, torch.zeros_like(p), neg_log(1 - p)))}


def loss_epr(logits: torch.Tensor, targets: torch.Tensor, expected_pos: float) -> Terms:
    """Expected positive regularisation (Cole et al.): positives -log p, plus the count regulariser."""
    p = torch.sigmoid(logits)
    zero = torch.zeros_like(p)
    return {"main": reduce(per_code(targets, neg_log(p), zero, neg_log(1 - p))),
            "reg": expected_positive_reg(p, expected_pos)}
