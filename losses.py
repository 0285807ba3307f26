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
register_stateless("an", loss_an, "assume negative (Cole et al.)")
register_stateless("EM", loss_em, "entropy maximisation on unknown labels (Zhou et al.)", hparams=("alpha",))


import vlpl  # noqa: E402,F401  (registers EM_PL and EM_PL_ASL; it imports this module)
