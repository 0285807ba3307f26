"""VLPL (Xing et al. 2024): CLIP pseudo-labels and the `EM_PL` / `EM_PL_ASL` losses.

Pseudo-label rule, per training image (and per view when the train transform
flips): s = softmax(cos(image, text_c) / T) over classes; s_c > threshold ->
pseudo-positive; the floor(partial x C) lowest classes -> pseudo-negative
(applied after the positives, so it wins, as in the reference). The frozen CLIP
cosines come from `scores.py` (computed once, cached); the rule runs once at
set-up on the whole (V*N, C) table, then each step only indexes it.

Flips: the reference scores the image actually fed, flipped or not. Here the
train set is an `ImageDataset(flip_views=True)`, which returns the *view index*
`index + N * flipped` of the image it flipped in place of the row index; the loss looks
its pseudo-labels up at that row of the (2N, C) table. The batch format stays
(image, targets, index).

Losses, per entry, with p = sigmoid(logit), targets +1/0/-1 and pseudo-labels q
(q only counts where the target is unknown); during the warm-up (epoch <=
--warmup-epochs, 0 in VLPL) both are `EM`:

    EM_PL      obs +1: -log p          q=+1: beta_pos (0.9(-log p) + 0.1(-log(1-p)))
               unknown: -alpha H(p)    q=-1: beta_neg (0.1(-log p) + 0.9(-log(1-p)))
    EM_PL_ASL  obs +1, q=+1: (1-p)^gamma_pos (-log p)      q=-1: p^gamma_neg (-log(1-p))
               unknown: -(1-p)^gamma_unknown H(p)          (no alpha, no beta: as the reference)

Observed negatives (only with --num-neg > 0) train as -log(1-p), as in every
loss of this tool. The reference's EM_PL leaves pseudo-negatives out of the
loss (its beta_neg term is commented out): beta_neg = 0 reproduces that. Its
EM_PL_ASL computes a clipped (clip 0.05) negative probability and never uses
it; matching its values means no clipping here either.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from config import LossHyper
from methods.base import (
    Builder,
    SPMLLoss,
    Terms,
    entropy,
    loss_em,
    neg_log,
    per_code,
    reduce,
)

log = logging.getLogger(__name__)

# VLPL's own run settings where they differ from the dataset presets (Zhou's EM/APL):
# pseudo-labels from the first epoch, batch 8 on every benchmark, keep training and pick the best epoch.
VLPL_DEFAULTS = {"warmup_epochs": 0, "patience": 0}
VLPL_BENCHMARK_BSIZE = 8


def vlpl_defaults(preset) -> dict:
    return {**VLPL_DEFAULTS, **({"bsize": VLPL_BENCHMARK_BSIZE} if preset.name != "digits" else {})}


def pseudo_labels(cosines: torch.Tensor, temp: float, threshold: float, partial: float) -> torch.Tensor:
    """(M, C) pseudo-labels in {+1, 0, -1} from CLIP cosines (M, C); see the module docstring."""
    scores = torch.softmax(cosines.float() / temp, dim=-1)
    labels = (scores > threshold).to(torch.float32)
    k = int(partial * cosines.shape[1])  # int() as the reference: floor for partial >= 0
    if k > 0:
        lowest = torch.topk(scores, k, dim=-1, largest=False).indices
        labels.scatter_(1, lowest, -1.0)
    labels[cosines.isnan().any(dim=1)] = 0  # an image left out as unreadable (--skip-bad-images): none
    return labels


def _with_pseudo(targets: torch.Tensor, pseudo: torch.Tensor, obs_pos, obs_neg, pl_pos, pl_neg, unknown) -> torch.Tensor:
    """Per-entry loss: observed labels first, then the pseudo-label of an unknown entry."""
    unknown = torch.where(pseudo == 1, pl_pos, torch.where(pseudo == -1, pl_neg, unknown))
    return per_code(targets, obs_pos, unknown, obs_neg)


def loss_em_pl(logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor, alpha: float, beta_pos: float,
               beta_neg: float = 0.0) -> Terms:
    p = torch.sigmoid(logits)
    pos, neg = neg_log(p), neg_log(1 - p)
    return {"main": reduce(_with_pseudo(targets, pseudo, pos, neg, beta_pos * (0.9 * pos + 0.1 * neg),
                                     beta_neg * (0.1 * pos + 0.9 * neg), -alpha * entropy(p)))}


def loss_em_pl_asl(logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor, gamma_pos: float,
                   gamma_unknown: float, gamma_neg: float) -> Terms:
    p = torch.sigmoid(logits)
    focal_pos = (1 - p) ** gamma_pos * neg_log(p)
    return {"main": reduce(_with_pseudo(targets, pseudo, focal_pos, neg_log(1 - p), focal_pos,
                                     p ** gamma_neg * neg_log(1 - p), -((1 - p) ** gamma_unknown) * entropy(p)))}


class VLPLLoss(SPMLLoss):
    """EM during the warm-up, then `fn` with the pseudo-labels of each sample's view."""

    needs_clip_scores = True

    @classmethod
    def builder(cls, fn: Callable[..., Terms], *hparams: str) -> Builder:
        """The builder of a VLPL loss `fn` reading the named `LossHyper` fields."""
        def build(hp: LossHyper, num_examples: int, num_classes: int) -> "VLPLLoss":
            return cls(fn, hp, num_examples, num_classes, **{name: getattr(hp, name) for name in hparams})

        return build

    def __init__(self, fn, hp: LossHyper, num_examples: int, num_classes: int, **hparams):
        super().__init__()
        self.fn, self.hparams, self.hp = fn, hparams, hp
        self.num_examples, self.num_classes = num_examples, num_classes
        self.active = False
        self.register_buffer("pseudo", torch.zeros(0, num_classes))

    def set_clip_cosines(self, cosines: np.ndarray | torch.Tensor) -> None:
        """The frozen-CLIP cosines of every view of every training image, (V*N, C)."""
        cosines = torch.as_tensor(cosines)
        if cosines.ndim != 2 or cosines.shape[1] != self.num_classes or cosines.shape[0] % self.num_examples:
            raise ValueError(f"CLIP cosines of shape {tuple(cosines.shape)} do not fit "
                             f"{self.num_examples} images x {self.num_classes} classes")
        hp = self.hp
        self.pseudo = pseudo_labels(cosines, hp.temp, hp.pl_threshold, hp.partial).to(self.pseudo.device)
        per_image = (self.pseudo == 1).sum(1).float().mean().item()
        log.info(f"VLPL pseudo-labels (T={hp.temp}, threshold={hp.pl_threshold}, partial={hp.partial}): "
                 f"{per_image:.2f} positives and {(self.pseudo == -1).sum(1).float().mean().item():.2f} negatives "
                 f"per image view")

    def start_epoch(self, epoch: int, score_train) -> None:
        self.active = epoch > self.hp.warmup_epochs  # the reference's `epoch > warmup_epoch`, epochs from 1
        if self.active and self.pseudo.shape[0] == 0:
            raise RuntimeError("VLPL loss used before set_clip_cosines()")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        if not self.active:
            return loss_em(logits, targets, self.hp.alpha)
        return self.fn(logits, targets, self.pseudo[index], **self.hparams)
