"""Loss registry: every loss of the reference papers, computed as the references do.

Conventions (SPEC §3): p = sigmoid(logit); `neg_log(x) = -log(x + 1e-5)`; the
per-entry loss matrix is summed and divided by B x C; regularisers are added as
separate named terms. Targets use the observed-label code: +1 positive, 0
unknown, -1 negative. An observed negative (only present with --num-neg > 0) is
always trained as a negative, -log(1 - p).

Stateless losses are plain functions of explicit tensors and named
hyperparameters, e.g.

    loss_em(logits, targets, alpha=0.1) -> {"main": tensor}

and are registered with the hyperparameters they read from the config. Each
registry entry builds an `SPMLLoss` module; the training loop only sees that
interface: `forward(logits, targets, index) -> dict of named terms` (the loop
sums and logs them), `start_epoch(epoch, score_train)` for methods that update
pseudo-labels between epochs, and `state_dict()` for checkpointing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from errors import UserError

LOG_EPSILON = 1e-5  # the references' epsilon inside the log

Terms = dict[str, torch.Tensor]


def neg_log(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(x + LOG_EPSILON)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy with the references' epsilon: p neg_log(p) + (1 - p) neg_log(1 - p)."""
    return p * neg_log(p) + (1 - p) * neg_log(1 - p)


def reduce(loss_mtx: torch.Tensor) -> torch.Tensor:
    """The references' normalisation: sum over the batch and classes / (B x C)."""
    return loss_mtx.sum() / loss_mtx.numel()


def _masked(targets: torch.Tensor, positive: torch.Tensor, unknown: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-entry loss from one matrix per label code (no boolean indexing: no host sync)."""
    zero = torch.zeros((), dtype=positive.dtype, device=positive.device)
    return (
        torch.where(targets == 1, positive, zero)
        + torch.where(targets == 0, unknown, zero)
        + torch.where(targets == -1, negative, zero)
    )


# --- the losses -----------------------------------------------------------------


def loss_iu(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Ignore unknown: positives -log p, negatives -log(1 - p), unknown entries 0.

    With the `full` label view this is `bce`; with `true_negatives` it is `iun`.
    """
    p = torch.sigmoid(logits)
    return {"main": reduce(_masked(targets, neg_log(p), torch.zeros_like(p), neg_log(1 - p)))}


def loss_an(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Assume negative (Cole et al.): every unknown entry is a negative."""
    p = torch.sigmoid(logits)
    neg = neg_log(1 - p)
    return {"main": reduce(_masked(targets, neg_log(p), neg, neg))}


def loss_em(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> Terms:
    """Entropy maximisation (Zhou et al.): unknown entries -alpha H(p)."""
    p = torch.sigmoid(logits)
    return {"main": reduce(_masked(targets, neg_log(p), -alpha * entropy(p), neg_log(1 - p)))}


def smoothed(p: torch.Tensor, positive: bool, ls_coef: float) -> torch.Tensor:
    """Label-smoothed log loss toward one target: (1 - eps)(-log q) + eps(-log(1 - q))."""
    hit, miss = (p, 1 - p) if positive else (1 - p, p)
    return (1.0 - ls_coef) * neg_log(hit) + ls_coef * neg_log(miss)


def loss_ls(logits: torch.Tensor, targets: torch.Tensor, ls_coef: float) -> Terms:
    """AN with label smoothing (Cole et al.); with the `full` view it is `bce_ls`."""
    p = torch.sigmoid(logits)
    neg = smoothed(p, False, ls_coef)
    return {"main": reduce(_masked(targets, smoothed(p, True, ls_coef), neg, neg))}


def loss_wan(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Weighted AN (Cole et al.): the assumed-negative term is divided by C - 1."""
    p = torch.sigmoid(logits)
    neg = neg_log(1 - p)
    return {"main": reduce(_masked(targets, neg_log(p), neg / (logits.shape[1] - 1), neg))}


def loss_pr(logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    """Positive ranking (Cole et al.): each observed positive i of an image pays
    sum over its unknown labels j of max(0, 1 - p_i + p_j); observed negatives -log(1 - p).

    Vectorised over a (B, C, C) margin tensor instead of the reference's double loop.
    """
    p = torch.sigmoid(logits)
    margins = torch.clamp(1.0 - p.unsqueeze(2) + p.unsqueeze(1), min=0)  # [b, i, j]
    ranking = (margins * (targets == 0).unsqueeze(1).to(p.dtype)).sum(dim=2)
    return {"main": reduce(_masked(targets, ranking, torch.zeros_like(p), neg_log(1 - p)))}


def expected_positive_reg(p: torch.Tensor, expected_pos: float) -> torch.Tensor:
    """(mean over the batch of sum_c p_c - k)^2 / C^2 (Cole et al., the squared norm)."""
    return (p.sum(dim=1).mean() - expected_pos) ** 2 / p.shape[1] ** 2


def loss_epr(logits: torch.Tensor, targets: torch.Tensor, expected_pos: float) -> Terms:
    """Expected positive regularisation (Cole et al.): positives -log p, plus the count regulariser."""
    p = torch.sigmoid(logits)
    zero = torch.zeros_like(p)
    return {"main": reduce(_masked(targets, neg_log(p), zero, neg_log(1 - p))),
            "reg": expected_positive_reg(p, expected_pos)}


# --- the registry ---------------------------------------------------------------


@dataclass(frozen=True)
class LossHyper:
    """Every loss hyperparameter the CLI exposes; each loss reads the ones it names."""

    alpha: float = 0.1
    beta: float = 0.2
    warmup_epochs: int = 2
    ls_coef: float = 0.1
    expected_pos: float = 2.9
    epochs: int = 10
    # VLPL (vlpl.py): pseudo-label rule and loss weights, the reference's values
    temp: float = 0.01
    pl_threshold: float = 0.3
    partial: float = 0.0
    beta_pos: float = 0.7
    beta_neg: float = 0.0
    gamma_pos: float = 2.0
    gamma_unknown: float = 4.0
    gamma_neg: float = 4.0


class SPMLLoss(nn.Module):
    """What the training loop sees of a loss."""

    label_view = "observed"

    def attach_train_labels(self, targets: torch.Tensor) -> None:
        """Called once before training with the (N_train, C) training targets, row = example index."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups of the loss's own parameters (none for most losses)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}] if params else []

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        """Called before each epoch (1-based); `score_train()` scores the train set in eval mode."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        raise NotImplementedError


class StatelessLoss(SPMLLoss):
    """A plain loss function bound to its named hyperparameters."""

    def __init__(self, fn: Callable[..., Terms], label_view: str, **hparams):
        super().__init__()
        self.fn, self.label_view, self.hparams = fn, label_view, hparams

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return self.fn(logits, targets, **self.hparams)

    def extra_repr(self) -> str:
        return f"{self.fn.__name__}, view={self.label_view}, {self.hparams}"


@dataclass(frozen=True)
class LossEntry:
    build: Callable[[LossHyper, int, int], SPMLLoss]  # (hyper, num_examples, num_classes)
    label_view: str
    help: str
    # The method's own run defaults where they differ from the dataset preset, e.g. {"patience": 0};
    # a function of the preset. Explicit flags still win.
    defaults: Callable[..., dict] = field(default=lambda preset: {})


LOSSES: dict[str, LossEntry] = {}


def register_stateless(name: str, fn: Callable[..., Terms], help: str, label_view: str = "observed", hparams: tuple[str, ...] = ()):
    def build(hp: LossHyper, num_examples: int, num_classes: int) -> SPMLLoss:
        return StatelessLoss(fn, label_view, **{k: getattr(hp, k) for k in hparams})

    LOSSES[name] = LossEntry(build, label_view, help)


def create_loss(name: str, hp: LossHyper, num_examples: int, num_classes: int) -> SPMLLoss:
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name].build(hp, num_examples, num_classes)


register_stateless("bce", loss_iu, "full-label BCE (oracle: trains on the full labels)", label_view="full")
register_stateless("bce_ls", loss_ls, "full-label BCE with label smoothing --ls-coef (oracle: trains on the full labels)",
                   label_view="full", hparams=("ls_coef",))
register_stateless("iun", loss_iu, "ignore unknown, but READS THE TRUE NEGATIVES on purpose (oracle, Cole et al.)",
                   label_view="true_negatives")
register_stateless("iu", loss_iu, "ignore unknown: observed positives and observed negatives only "
                   "(with --num-neg 0 only the positives train)")
register_stateless("pr", loss_pr, "positive ranking hinge, positives above unknowns (Cole et al.)")
register_stateless("an", loss_an, "assume negative (Cole et al.)")
register_stateless("an_ls", loss_ls, "assume negative with label smoothing --ls-coef (Cole et al.)", hparams=("ls_coef",))
register_stateless("wan", loss_wan, "weighted assume negative, unknown term / (C - 1) (Cole et al.)")
register_stateless("epr", loss_epr, "positives + expected-positive-count regulariser --expected-pos (Cole et al.)",
                   hparams=("expected_pos",))
register_stateless("EM", loss_em, "entropy maximisation on unknown labels (Zhou et al.)", hparams=("alpha",))

# The stateful losses live in their own modules and register themselves here;
# importing them last makes every CLI choice visible to whoever imports `LOSSES`.
import loss_role  # noqa: E402,F401
import pseudo_negatives  # noqa: E402,F401
import vlpl  # noqa: E402,F401  (EM_PL and EM_PL_ASL)
