"""The loss registry: every loss of the reference papers, computed as the references do.

The stateless losses live here as plain functions of explicit tensors and named
hyperparameters, e.g.

    loss_em(logits, targets, alpha=0.1) -> {"main": tensor}

the stateful methods in `methods/` (ROLE, EM + APL, VLPL, Large-Loss, GR, AEVLP's GPR; the robust
losses Hill, SPLC, focal, ASL in `methods/robust.py`). `LOSSES` is the one
table of every loss: its builder, the label view it trains on, its help line (the
CLI's `-l` choices and `-h`) and the run defaults of its paper where they differ
from the dataset's. Numerics and the `SPMLLoss` interface: `methods/base.py`.
An observed negative (only present with --num-neg > 0 in
preproc/generate_observed_labels.py) is always trained as a negative, -log(1 - p).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from config import LossHyper
from errors import UserError
from methods.aevlp import GPRLoss
from methods.apl import EmAplLoss
from methods.base import (
    Builder,
    SPMLLoss,
    Terms,
    expected_positive_reg,
    loss_em,
    neg_log,
    per_code,
    reduce,
    stateless,
)
from methods.gr import CLASSIFIER_LR_MULT as GR_CLASSIFIER_LR_MULT
from methods.gr import GRLoss
from methods.large_loss import LargeLoss, large_loss_defaults
from methods.robust import SPLCLoss, loss_asl, loss_focal, loss_hill
from methods.pu import PULoss
from methods.role import RoleLoss
from methods.vlpl import VLPLLoss, loss_em_pl, loss_em_pl_asl, vlpl_defaults
from presets import AEVLP_CLIP_MODEL, AEVLP_SETTINGS

# --- the losses -----------------------------------------------------------------


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


@dataclass(frozen=True)
class LossEntry:
    build: Builder
    label_view: str  # which training targets it reads (datasets.LABEL_VIEWS)
    help: str
    # The method's own run defaults where they differ from the dataset preset, e.g. {"patience": 0};
    # a function of the preset. Explicit flags still win.
    defaults: Callable[..., dict] = field(default=lambda preset: {})
    # Reads --expected-pos: a dataset of the user's own, which has no published count, must give it
    needs_expected_pos: bool = False
    # Its --warmup-epochs must end before the run does: a run of that many epochs or fewer gets a shorter warm-up
    warmup_before_end: bool = False
    # A statistic of the batch enters it (an expected count of positives, the k largest losses, a temperature),
    # or its batches change per-example state: under torchrun it is computed on the whole global batch (methods/base.py)
    whole_batch: bool = False


OBSERVED, FULL, TRUE_NEGATIVES = "observed", "full", "true_negatives"

LOSSES: dict[str, LossEntry] = {
    "bce": LossEntry(stateless(loss_iu), FULL, "full-label BCE (oracle: trains on the full labels)"),
    "bce_ls": LossEntry(stateless(loss_ls, "ls_coef"), FULL,
                        "full-label BCE with label smoothing --ls-coef (oracle: trains on the full labels)"),
    "iun": LossEntry(stateless(loss_iu), TRUE_NEGATIVES,
                     "ignore unknown, but READS THE TRUE NEGATIVES on purpose (oracle, Cole et al.)"),
    "iu": LossEntry(stateless(loss_iu), OBSERVED,
                    "ignore unknown: observed positives and observed negatives only (with single-positive labels "
                    "only the positives train)"),
    "pr": LossEntry(stateless(loss_pr), OBSERVED, "positive ranking hinge, positives above unknowns (Cole et al.)"),
    "an": LossEntry(stateless(loss_an), OBSERVED, "assume negative (Cole et al.)"),
    "an_ls": LossEntry(stateless(loss_ls, "ls_coef"), OBSERVED,
                       "assume negative with label smoothing --ls-coef (Cole et al.)"),
    "wan": LossEntry(stateless(loss_wan), OBSERVED, "weighted assume negative, unknown term / (C - 1) (Cole et al.)"),
    "epr": LossEntry(stateless(loss_epr, "expected_pos"), OBSERVED,
                     "positives + expected-positive-count regulariser --expected-pos (Cole et al.)",
                     needs_expected_pos=True, whole_batch=True),
    "EM": LossEntry(stateless(loss_em, "alpha"), OBSERVED, "entropy maximisation on unknown labels (Zhou et al.)"),
    "role": LossEntry(RoleLoss.from_hyper, OBSERVED,
                      "regularised online label estimation: a learned N x C label matrix at lr x10 + EPR "
                      "(Cole et al.)", needs_expected_pos=True, whole_batch=True),
    "EM_APL": LossEntry(EmAplLoss.from_hyper, OBSERVED,
                        "EM + asymmetric pseudo-labelling: soft negatives from --warmup-epochs on, weight --beta "
                        "(Zhou et al.)", warmup_before_end=True),
    "EM_PL": LossEntry(VLPLLoss.builder(loss_em_pl, "alpha", "beta_pos", "beta_neg"), OBSERVED,
                       "VLPL: EM plus frozen-CLIP pseudo-labels (Xing et al.)", defaults=vlpl_defaults),
    "EM_PL_ASL": LossEntry(VLPLLoss.builder(loss_em_pl_asl, "gamma_pos", "gamma_unknown", "gamma_neg"), OBSERVED,
                           "VLPL with focal weights on positives, unknowns and pseudo-negatives (Xing et al.)",
                           defaults=vlpl_defaults),
    "LL-R": LossEntry(LargeLoss.builder("LL-R"), OBSERVED,
                      "large-loss rejection: AN, the largest unknown losses zeroed, more each epoch (--delta-rel), "
                      "classifier lr x10 (Kim et al. CVPR 2022)", defaults=large_loss_defaults("LL-R"),
                      whole_batch=True),
    "LL-Ct": LossEntry(LargeLoss.builder("LL-Ct"), OBSERVED,
                       "large-loss temporary correction: their targets flipped to 1 for the batch "
                       "(Kim et al. CVPR 2022)", defaults=large_loss_defaults("LL-Ct"), whole_batch=True),
    "LL-Cp": LossEntry(LargeLoss.builder("LL-Cp"), OBSERVED,
                       "large-loss permanent correction: their targets set to 1 for the rest of the run "
                       "(Kim et al. CVPR 2022)", defaults=large_loss_defaults("LL-Cp"), whole_batch=True),
    "GR": LossEntry(GRLoss.from_hyper, OBSERVED,
                    "generalized robust loss: soft pseudo-labels and reweighting of unknowns on an epoch schedule, "
                    "classifier lr x10 (Chen et al. IJCAI 2024)",
                    defaults=lambda preset: {"classifier_lr_mult": GR_CLASSIFIER_LR_MULT}),
    "GPR": LossEntry(GPRLoss.from_hyper, OBSERVED,
                     "AEVLP's generalized pseudo-label robust loss: GR on unknowns, DAMP's pseudo-positives from "
                     "frozen-CLIP scores of each image and of its grid of tiles, weighted in [lambda2, lambda1], "
                     "+ the expected-positive regulariser; classifier lr x10 (Tran et al. ICCV 2025)",
                     defaults=lambda preset: {"classifier_lr_mult": GR_CLASSIFIER_LR_MULT, "clip_model": AEVLP_CLIP_MODEL,
                                              **AEVLP_SETTINGS.get(preset.name, {})},
                     needs_expected_pos=True, whole_batch=True),
    "hill": LossEntry(stateless(loss_hill), OBSERVED,
                      "Hill: focal-margin positives, (1.5 - p) p^2 on unknowns (Zhang et al. 2021, robust loss design "
                      "for missing labels)"),
    "SPLC": LossEntry(SPLCLoss.from_hyper, OBSERVED,
                      "self-paced loss correction: focal margin; unknowns with p > 0.6 trained as positives from "
                      "epoch 2 (Zhang et al. 2021)"),
    "focal": LossEntry(stateless(loss_focal), OBSERVED, "focal loss, gamma 2, unknowns as negatives (Lin et al. ICCV 2017)"),
    "ASL": LossEntry(stateless(loss_asl), OBSERVED,
                     "asymmetric loss, gamma_neg 4, gamma_pos 0, clip 0.05, unknowns as negatives "
                     "(Ridnik et al. ICCV 2021)"),
    "PU": LossEntry(PULoss.from_hyper, OBSERVED,
                    "PU-MLC: variational positive-unlabeled loss with adaptive temperature --pu-alpha and "
                    "re-balance --pu-gamma, plus a MixUp regulariser (a second forward pass) (Yuan et al.)",
                    whole_batch=True),
}


def create_loss(name: str, hp: LossHyper, num_examples: int, num_classes: int) -> SPMLLoss:
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    loss = LOSSES[name].build(hp, num_examples, num_classes)
    loss.whole_batch = LOSSES[name].whole_batch
    return loss
