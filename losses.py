"""The loss registry: every `-l NAME`, one table.

`LOSSES` holds, for each loss, its builder, the label view it trains on, its help line (the
CLI's `-l` choices and `-h`) and the run defaults of its paper where they differ from the
dataset's. The losses themselves are in `methods/`: Cole et al.'s in `methods/cole.py`, EM in
`methods/base.py` (with the numerics and the `SPMLLoss` interface), the stateful methods (ROLE,
EM + APL, VLPL, Large-Loss, GR, AEVLP's GPR, PU-MLC) and the robust losses (Hill, SPLC, focal,
ASL) in their own modules. The table names them (`lazy.Lazy`) and imports none: the flags read
it without torch. A stateless loss is a function of explicit tensors and named
hyperparameters, e.g.

    loss_em(logits, targets, alpha=0.1) -> {"main": tensor}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from errors import UserError
from lazy import Lazy

if TYPE_CHECKING:
    from config import LossHyper
    from methods.base import Builder, SPMLLoss


def stateless(loss: str, *hparams: str) -> Lazy:
    """The builder of the stateless loss function `loss` ("module:function"), reading `hparams` of LossHyper."""
    return Lazy("methods.base:stateless", Lazy(loss), *hparams)


def vlpl(loss: str, *hparams: str) -> Lazy:
    """The builder of VLPL's loss `loss` of `methods/vlpl/loss.py`, on CLIP pseudo-labels."""
    return Lazy("methods.vlpl:VLPLLoss.builder", Lazy(f"methods.vlpl:{loss}"), *hparams)


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
    "bce": LossEntry(stateless("methods.cole:loss_iu"), FULL, "full-label BCE (oracle: trains on the full labels)"),
    "bce_ls": LossEntry(stateless("methods.cole:loss_ls", "ls_coef"), FULL,
                        "full-label BCE with label smoothing --ls-coef (oracle: trains on the full labels)"),
    "iun": LossEntry(stateless("methods.cole:loss_iu"), TRUE_NEGATIVES,
                     "ignore unknown, but READS THE TRUE NEGATIVES on purpose (oracle, Cole et al.)"),
    "iu": LossEntry(stateless("methods.cole:loss_iu"), OBSERVED,
                    "ignore unknown: observed positives and observed negatives only (with single-positive labels "
                    "only the positives train)"),
    "pr": LossEntry(stateless("methods.cole:loss_pr"), OBSERVED,
                    "positive ranking hinge, positives above unknowns (Cole et al.)"),
    "an": LossEntry(stateless("methods.cole:loss_an"), OBSERVED, "assume negative (Cole et al.)"),
    "an_ls": LossEntry(stateless("methods.cole:loss_ls", "ls_coef"), OBSERVED,
                       "assume negative with label smoothing --ls-coef (Cole et al.)"),
    "wan": LossEntry(stateless("methods.cole:loss_wan"), OBSERVED,
                     "weighted assume negative, unknown term / (C - 1) (Cole et al.)"),
    "epr": LossEntry(stateless("methods.cole:loss_epr", "expected_pos"), OBSERVED,
                     "positives + expected-positive-count regulariser --expected-pos (Cole et al.)",
                     needs_expected_pos=True, whole_batch=True),
    "EM": LossEntry(stateless("methods.base:loss_em", "alpha"), OBSERVED,
                    "entropy maximisation on unknown labels (Zhou et al.)"),
    "role": LossEntry(Lazy("methods.role:RoleLoss.from_hyper"), OBSERVED,
                      "regularised online label estimation: a learned N x C label matrix at lr x10 + EPR "
                      "(Cole et al.)", needs_expected_pos=True, whole_batch=True),
    "EM_APL": LossEntry(Lazy("methods.apl:EmAplLoss.from_hyper"), OBSERVED,
                        "EM + asymmetric pseudo-labelling: soft negatives from --warmup-epochs on, weight --beta "
                        "(Zhou et al.)", warmup_before_end=True),
    "EM_PL": LossEntry(vlpl("loss_em_pl", "alpha", "beta_pos", "beta_neg"), OBSERVED,
                       "VLPL: EM plus frozen-CLIP pseudo-labels (Xing et al.)",
                       defaults=Lazy("methods.vlpl:vlpl_defaults")),
    "EM_PL_ASL": LossEntry(vlpl("loss_em_pl_asl", "gamma_pos", "gamma_unknown", "gamma_neg"), OBSERVED,
                           "VLPL with focal weights on positives, unknowns and pseudo-negatives (Xing et al.)",
                           defaults=Lazy("methods.vlpl:vlpl_defaults")),
    "LL-R": LossEntry(Lazy("methods.large_loss:LargeLoss.builder", "LL-R"), OBSERVED,
                      "large-loss rejection: AN, the largest unknown losses zeroed, more each epoch (--delta-rel), "
                      "classifier lr x10 (Kim et al. CVPR 2022)",
                      defaults=Lazy("methods.large_loss:large_loss_defaults", "LL-R"), whole_batch=True),
    "LL-Ct": LossEntry(Lazy("methods.large_loss:LargeLoss.builder", "LL-Ct"), OBSERVED,
                       "large-loss temporary correction: their targets flipped to 1 for the batch "
                       "(Kim et al. CVPR 2022)", defaults=Lazy("methods.large_loss:large_loss_defaults", "LL-Ct"),
                       whole_batch=True),
    "LL-Cp": LossEntry(Lazy("methods.large_loss:LargeLoss.builder", "LL-Cp"), OBSERVED,
                       "large-loss permanent correction: their targets set to 1 for the rest of the run "
                       "(Kim et al. CVPR 2022)", defaults=Lazy("methods.large_loss:large_loss_defaults", "LL-Cp"),
                       whole_batch=True),
    "GR": LossEntry(Lazy("methods.gr:GRLoss.from_hyper"), OBSERVED,
                    "generalized robust loss: soft pseudo-labels and reweighting of unknowns on an epoch schedule, "
                    "classifier lr x10 (Chen et al. IJCAI 2024)",
                    defaults=Lazy("methods.gr:gr_defaults")),
    "GPR": LossEntry(Lazy("methods.aevlp.gpr:GPRLoss.from_hyper"), OBSERVED,
                     "AEVLP's generalized pseudo-label robust loss: GR on unknowns, DAMP's pseudo-positives from "
                     "frozen-CLIP scores of each image and of its grid of tiles, weighted in [lambda2, lambda1], "
                     "+ the expected-positive regulariser; classifier lr x10 (Tran et al. ICCV 2025)",
                     defaults=Lazy("methods.aevlp.gpr:gpr_defaults"),
                     needs_expected_pos=True, whole_batch=True),
    "hill": LossEntry(stateless("methods.robust:loss_hill"), OBSERVED,
                      "Hill: focal-margin positives, (1.5 - p) p^2 on unknowns (Zhang et al. 2021, robust loss design "
                      "for missing labels)"),
    "SPLC": LossEntry(Lazy("methods.robust:SPLCLoss.from_hyper"), OBSERVED,
                      "self-paced loss correction: focal margin; unknowns with p > 0.6 trained as positives from "
                      "epoch 2 (Zhang et al. 2021)"),
    "focal": LossEntry(stateless("methods.robust:loss_focal"), OBSERVED,
                       "focal loss, gamma 2, unknowns as negatives (Lin et al. ICCV 2017)"),
    "ASL": LossEntry(stateless("methods.robust:loss_asl"), OBSERVED,
                     "asymmetric loss, gamma_neg 4, gamma_pos 0, clip 0.05, unknowns as negatives "
                     "(Ridnik et al. ICCV 2021)"),
    "PU": LossEntry(Lazy("methods.pu:PULoss.from_hyper"), OBSERVED,
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
