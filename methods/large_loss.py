"""Large-Loss rejection and correction (Kim et al., "Large Loss Matters in Weakly Supervised
Multi-Label Classification", CVPR 2022): LL-R, LL-Ct and LL-Cp.

Every unknown label is assumed negative (AN, binary cross-entropy on the logits, mean
over B x C as the authors' `loss_an`). Epoch 1 trains plain AN. From epoch 2 on, in
every batch, the k unknown entries with the largest loss are taken as likely false
negatives (the memorisation effect: a clean label's loss falls early, a wrong one's late):

    LL-R   their loss is rejected (zero)
    LL-Ct  their target is flipped to 1 for this batch (temporary correction)
    LL-Cp  their target is flipped to 1, and the entry stays positive for the rest of
           the run (permanent correction)

LL-R / LL-Ct: k = ceil(B C (1 - clean_rate)), the clean rate starting at 1 and falling by
delta_rel / 100 after every epoch, so at epoch e it is 1 - (e - 1) delta_rel / 100.
LL-Cp: a fixed k = ceil(B C delta_rel / 100) per batch from epoch 2 on.

Differences from the authors' code (snucml/LargeLossMatters), each on purpose:
- their LL-Cp tests `P['mod_scheme'] is 'LL-Cp'` (identity, not equality, of two strings),
  which is False, so their permanent correction is never applied and their LL-Cp trains
  exactly as LL-Ct, its k growing every epoch as LL-Ct's (16, 32, 48, ... at delta_rel 10 on a
  16 x 10 batch) rather than the paper's fixed k; here the correction is applied, and kept in the loss's
  `corrected` buffer (indexed by example index), so `state_dict()` checkpoints it;
- exactly the k largest unknown losses are taken (their `>=` threshold on the k-th value
  takes every tie too, and an observed positive whenever the k-th value is 0);
- the rate is (e - 1) delta_rel / 100 computed once, not 1 minus a repeatedly decremented
  float: theirs can round B C (1 - clean_rate) just above a whole number, one k too many.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from config import LossHyper
from errors import UserError
from methods.base import SPMLLoss, Terms

SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")
# The delta_rel of the authors' best results per scheme (their README: {0.1, ..., 0.5})
DEFAULT_DELTA_REL = {"LL-R": 0.5, "LL-Ct": 0.2, "LL-Cp": 0.1}
CLASSIFIER_LR_MULT = 10.0  # the authors' `lr_mult`: the final layer learns 10x faster


def large_loss_defaults(scheme: str) -> Callable[..., dict]:
    """The run defaults of one scheme (`LossEntry.defaults`): its delta_rel, the x10 classifier lr."""
    return lambda preset: {"delta_rel": DEFAULT_DELTA_REL[scheme], "classifier_lr_mult": CLASSIFIER_LR_MULT}


def num_large(batch_size: int, num_classes: int, scheme: str, delta_rel: float, epoch: int) -> int:
    """k, how many unknown entries of a (batch_size, num_classes) batch are rejected or corrected at `epoch`."""
    if epoch <= 1:
        return 0
    rate = delta_rel / 100 if scheme == "LL-Cp" else (epoch - 1) * delta_rel / 100
    # round(.., 9): a product that is a whole number in exact arithmetic stays one
    return min(math.ceil(round(batch_size * num_classes * rate, 9)), batch_size * num_classes)


def largest_unknown(loss_mtx: torch.Tensor, unknown: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest entries of `loss_mtx` among the `unknown` ones (fewer if fewer are unknown)."""
    chosen = torch.zeros_like(unknown)
    if k == 0:
        return chosen
    masked = torch.where(unknown, loss_mtx.detach(), torch.full_like(loss_mtx, -math.inf)).flatten()
    top = torch.topk(masked, k).indices
    chosen.view(-1)[top] = True
    return chosen & unknown  # an -inf pick (k above the number of unknown entries) is no pick


def loss_large(logits: torch.Tensor, targets: torch.Tensor, scheme: str, k: int) -> tuple[Terms, torch.Tensor]:
    """One batch of LL-`scheme` with k large losses handled; returns the terms and the mask of the k entries.

    An observed negative (-1) trains as a negative and is never corrected, as in the authors' code.
    """
    unknown = targets == 0
    assumed = (targets == 1).to(logits.dtype)  # AN: unknown and negative entries target 0
    loss_mtx = F.binary_cross_entropy_with_logits(logits, assumed, reduction="none")
    large = largest_unknown(loss_mtx, unknown, k)
    if scheme == "LL-R":
        loss_mtx = torch.where(large, torch.zeros_like(loss_mtx), loss_mtx)
    else:
        flipped = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
        loss_mtx = torch.where(large, flipped, loss_mtx)
    return {"main": loss_mtx.mean()}, large


class LargeLoss(SPMLLoss):
    """LL-R, LL-Ct or LL-Cp; LL-Cp's permanent corrections are a buffer indexed by example index."""

    @classmethod
    def builder(cls, scheme: str):
        def build(hp: LossHyper, num_examples: int, num_classes: int) -> "LargeLoss":
            delta_rel = DEFAULT_DELTA_REL[scheme] if hp.delta_rel is None else hp.delta_rel
            return cls(scheme, num_examples, num_classes, delta_rel)

        return build

    def __init__(self, scheme: str, num_examples: int, num_classes: int, delta_rel: float):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown Large-Loss scheme {scheme!r}")
        if not 0 < delta_rel <= 100:
            raise UserError(f"--delta-rel must be in (0, 100] (percentage points of the clean rate per epoch), "
                            f"got {delta_rel}")
        self.scheme, self.delta_rel, self.epoch = scheme, delta_rel, 1
        # LL-Cp: unknown entries corrected to positive for good (empty for LL-R, LL-Ct)
        self.register_buffer("corrected", torch.zeros(num_examples if scheme == "LL-Cp" else 0, num_classes,
                                                      dtype=torch.bool))

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        self.epoch = epoch  # the schedule is a function of the epoch alone, so a resumed run recomputes it

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        if self.scheme == "LL-Cp":
            targets = torch.where(self.corrected[index], torch.ones_like(targets), targets)
        k = num_large(logits.shape[0], logits.shape[1], self.scheme, self.delta_rel, self.epoch)
        terms, large = loss_large(logits, targets, self.scheme, k)
        if self.scheme == "LL-Cp":
            self.corrected[index] |= large
        return terms

    def extra_repr(self) -> str:
        return f"{self.scheme}, delta_rel={self.delta_rel}"
