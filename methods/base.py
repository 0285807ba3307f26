"""What every loss is made of: the references' numerics and the interface the training loop sees.

Conventions (Cole et al. 2021, Zhou et al. 2022): p = sigmoid(logit);
`neg_log(x) = -log(x + 1e-5)`; the per-entry loss matrix is summed and divided by
B x C; regularisers are added as separate named terms. Targets use the observed-label
code: +1 positive, 0 unknown, -1 negative.

A loss is an `SPMLLoss`: `forward(logits, targets, index) -> dict of named terms`
(the loop sums and logs them), `start_epoch(epoch, score_train)` for methods that
update pseudo-labels between epochs, `extra_terms(model, images, logits, targets,
index, whole)` for a loss that runs the model once more (PU-MLC's MixUp regulariser), and
`state_dict()` for checkpointing. Each
method builds itself from the run's `LossHyper` with `from_hyper(hp, num_examples,
num_classes)`; `losses.py` registers them all in one table.

A loss whose registry entry says `whole_batch` (a batch statistic enters it, or batches
change its per-example state) sees the whole global batch under torchrun: the logits,
targets and index of every process's rows (`WholeBatch`), so it computes what one
process computes. The others see each process's own rows, cheaper and equal for a mean
over images.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from config import LossHyper

LOG_EPSILON = 1e-5  # the references' epsilon inside the log

Terms = dict[str, torch.Tensor]
Builder = Callable[[LossHyper, int, int], "SPMLLoss"]  # (hyper, num_examples, num_classes) -> loss


def neg_log(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(x + LOG_EPSILON)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy with the references' epsilon: p neg_log(p) + (1 - p) neg_log(1 - p)."""
    return p * neg_log(p) + (1 - p) * neg_log(1 - p)


def reduce(loss_mtx: torch.Tensor) -> torch.Tensor:
    """The references' normalisation: sum over the batch and classes / (B x C)."""
    return loss_mtx.sum() / loss_mtx.numel()


def per_code(targets: torch.Tensor, positive: torch.Tensor, unknown: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The per-entry loss matrix: `positive` where the target is +1, `unknown` at 0, `negative` at -1.

    The one way every loss assembles its matrix; a method with pseudo-labels folds
    them into `unknown` first. No boolean indexing: no host sync.
    """
    zero = torch.zeros((), dtype=positive.dtype, device=positive.device)
    return (
        torch.where(targets == 1, positive, zero)
        + torch.where(targets == 0, unknown, zero)
        + torch.where(targets == -1, negative, zero)
    )


def expected_positive_reg(p: torch.Tensor, expected_pos: float) -> torch.Tensor:
    """(mean over the batch of sum_c p_c - k)^2 / C^2 (Cole et al., the squared norm)."""
    return (p.sum(dim=1).mean() - expected_pos) ** 2 / p.shape[1] ** 2


def loss_em(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> Terms:
    """Entropy maximisation (Zhou et al.): unknown entries -alpha H(p).

    Here, not in losses.py: APL and VLPL train with it before their pseudo-labels exist.
    """
    p = torch.sigmoid(logits)
    return {"main": reduce(per_code(targets, neg_log(p), -alpha * entropy(p), neg_log(1 - p)))}


class WholeBatch:
    """Where the rows of a training batch are, for a loss that needs all of them.

    In one process, here: `gather` returns its argument and this process does all the
    work. Under torchrun each process holds a contiguous part of the global batch and
    `training.distributed.GlobalBatch` gathers the parts.
    """

    def gather(self, local: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The rows of the whole batch, in its order; a gradient flows back to this process's own rows.
        With `count`: the results of the `count` items of work that `part(count)` shared out."""
        return local

    def part(self, count: int) -> slice:
        """Of `count` items of work over the whole batch (PU-MLC's MixUp pairs), the ones this process does."""
        return slice(0, count)


ONE_PROCESS = WholeBatch()


class SPMLLoss(nn.Module):
    """What the training loop sees of a loss."""

    # What the loss needs attached before training, besides the train labels (modes/setup.build_loss):
    needs_clip_scores = False  # frozen-CLIP cosines of the train images (VLPL), or of their crops (AEVLP)
    # Crops whose flips the train set draws for each sample, packed in its view index (AEVLP's DAMP)
    crop_flips = 0
    # linear_init fine-tunes with the state the linear phase ended with (ROLE's label estimates)
    carries_state_across_phases = False
    # Computed on the whole global batch under torchrun; set from the registry entry (losses.create_loss)
    whole_batch = False

    def attach_train_labels(self, targets: torch.Tensor) -> None:
        """Called once before training with the (N_train, C) training targets, row = example index."""

    def clip_scoring(self) -> dict:
        """With `needs_clip_scores`: how the train images are scored, as keyword arguments of
        methods/vlpl/scores.train_similarities (crops, text graph, dtype); the whole image by default."""
        return {}

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups of the loss's own parameters (none for most losses)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}] if params else []

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        """Called before each epoch (1-based); `score_train()` scores the train set in eval mode."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        raise NotImplementedError

    def extra_terms(self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    index: torch.Tensor, whole: WholeBatch = ONE_PROCESS) -> Terms:
        """Terms that need the model again (e.g. a regulariser's second forward pass on mixed images).

        The training loop calls it for every loss right after `forward`, on the same
        batch, with the model in train mode; the terms are summed and logged like
        `forward`'s. `logits`, `targets` and `index` are those `forward` got; `images` are
        this process's own (`whole.gather(images)`: the whole batch's). Most losses need no
        second pass: none by default.
        """
        return {}


class StatelessLoss(SPMLLoss):
    """A plain loss function bound to its named hyperparameters."""

    def __init__(self, fn: Callable[..., Terms], **hparams):
        super().__init__()
        self.fn, self.hparams = fn, hparams

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return self.fn(logits, targets, **self.hparams)

    def extra_repr(self) -> str:
        return f"{self.fn.__name__}, {self.hparams}"


def stateless(fn: Callable[..., Terms], *hparams: str) -> Builder:
    """The builder of a plain loss function reading the named `LossHyper` fields."""
    def build(hp: LossHyper, num_examples: int, num_classes: int) -> SPMLLoss:
        return StatelessLoss(fn, **{name: getattr(hp, name) for name in hparams})

    return build
