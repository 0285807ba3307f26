"""EM + APL (Zhou et al. ECCV 2022): entropy maximisation with asymmetric pseudo-labelling.

Schedule (Zhou's Algorithm 1 and code): the model trains `warmup_epochs` epochs
with plain EM; from then on, *before* each later epoch e (e > warmup_epochs, so
after epochs warmup, ..., epochs - 1 have finished), one scoring pass over the
train set in eval mode selects, per class c, the

    floor(0.9 x n_unknown_c / (epochs - warmup_epochs))

lowest-scored entries among those still unknown (not observed, not already
pseudo-labelled), where n_unknown_c is the number of unknown entries of class c
in the observed labels. Each gets the soft negative target s = its score, kept
from then on. Over the epochs - warmup_epochs selections 90% of the unknown
entries of each class become soft negatives. (The reference selects after every
epoch >= warm-up, the last selection of the run being unused.) Positives never
get pseudo-labels.

The soft labels live in buffers of the loss module (`state_dict()` checkpoints
them), never in the dataset's observed matrix.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from config import LossHyper
from errors import UserError
from methods.base import SPMLLoss, Terms, entropy, neg_log, per_code, reduce

log = logging.getLogger(__name__)

NEG_PROPORTION = 0.9  # share of each class's unknown entries pseudo-labelled over the run


def loss_em_apl(logits: torch.Tensor, targets: torch.Tensor, soft_targets: torch.Tensor, pseudo: torch.Tensor,
                alpha: float, beta: float) -> Terms:
    """EM on unknown entries, beta (s(-log p) + (1 - s)(-log(1 - p))) on pseudo-labelled ones.

    `pseudo` (bool, B x C) marks pseudo-labelled entries, `soft_targets` holds their s.
    """
    p = torch.sigmoid(logits)
    soft = beta * (soft_targets * neg_log(p) + (1 - soft_targets) * neg_log(1 - p))
    unknown = torch.where(pseudo, soft, -alpha * entropy(p))
    return {"main": reduce(per_code(targets, neg_log(p), unknown, neg_log(1 - p)))}


def select_pseudo_negatives(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per class c, mark the `counts[c]` lowest `scores[:, c]` among `candidates[:, c]`.

    One partial sort (top-k smallest, k = the largest count) of the class-major
    matrix for all classes at once; exact ties may be broken either way.
    Returns a bool (N, C) mask of the selected entries.
    """
    take = torch.minimum(counts.to(scores.device), candidates.sum(dim=0))
    k = int(take.max()) if take.numel() else 0
    chosen = torch.zeros(candidates.shape[::-1], dtype=torch.bool, device=scores.device)  # (C, N)
    if k == 0:
        return chosen.T
    # non-candidates score +inf, so they come after every candidate and `take` never reaches them
    masked = torch.where(candidates, scores, torch.full_like(scores, float("inf"))).T.contiguous()
    lowest = torch.topk(masked, k, dim=1, largest=False, sorted=True).indices
    chosen.scatter_(1, lowest, torch.arange(k, device=scores.device).unsqueeze(0) < take.unsqueeze(1))
    return chosen.T


class EmAplLoss(SPMLLoss):
    """EM + APL; the soft negatives are indexed by the example index of each batch."""

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "EmAplLoss":
        return cls(num_examples, num_classes, hp.alpha, hp.beta, hp.warmup_epochs, hp.epochs)

    def __init__(self, num_examples: int, num_classes: int, alpha: float, beta: float, warmup_epochs: int, epochs: int):
        super().__init__()
        if warmup_epochs >= epochs:
            raise UserError(f"EM_APL: --warmup-epochs {warmup_epochs} must be below --epochs {epochs}, "
                            "otherwise no pseudo-label is ever used (use -l EM for plain EM)")
        self.alpha, self.beta, self.warmup_epochs, self.epochs = alpha, beta, warmup_epochs, epochs
        self.register_buffer("soft_targets", torch.zeros(num_examples, num_classes))
        self.register_buffer("pseudo", torch.zeros(num_examples, num_classes, dtype=torch.bool))
        self.register_buffer("per_round", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("unknown", torch.zeros(num_examples, num_classes, dtype=torch.bool), persistent=False)

    def attach_train_labels(self, targets: torch.Tensor) -> None:
        if targets.shape != self.pseudo.shape:
            raise UserError(f"EM_APL's pseudo-label store is {tuple(self.pseudo.shape)} but the train labels are "
                            f"{tuple(targets.shape)}")
        self.unknown = (targets == 0).to(self.pseudo.device)
        rounds = self.epochs - self.warmup_epochs
        # floor, as the reference's int() of a positive number
        self.per_round = torch.floor(NEG_PROPORTION * self.unknown.sum(dim=0).double() / rounds).long()

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        if epoch <= self.warmup_epochs:
            return
        scores = score_train().to(self.soft_targets)
        readable = ~scores.isnan().any(dim=1, keepdim=True)  # an image left out as unreadable has no score
        chosen = select_pseudo_negatives(scores, self.unknown & ~self.pseudo & readable, self.per_round)
        self.soft_targets = torch.where(chosen, scores, self.soft_targets)
        self.pseudo |= chosen
        log.info(f"APL before epoch {epoch}: {int(chosen.sum())} new soft negatives, "
                 f"{int(self.pseudo.sum())} in all ({100 * self.pseudo.sum() / self.unknown.sum().clamp(min=1):.1f}% "
                 "of the unknown entries)")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return loss_em_apl(logits, targets, self.soft_targets[index], self.pseudo[index], self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, warmup_epochs={self.warmup_epochs}, epochs={self.epochs}"
