"""PU-MLC's loss (Yuan, Zhang, Huang, "Positive Label Is All You Need for Multi-Label
Classification", ICME 2024): a variational positive-unlabeled term per class, plus
VPU's MixUp regulariser, which runs the model a second time on mixed images.

Per class c, over the batch of B images (logits z, observed labels y):

    T_c   = clamp(alpha * std_c(z), TEMPERATURE_FLOOR, 1)      population std, no gradient
    q_ic  = sigmoid(z_ic / T_c)                                 the temperature is used only here
    w_c   = (mean_i q_ic)^gamma                                 the re-balance factor, no gradient
    L_var = sum_c [ w_c log(mean_i q_ic + 2 eps) - mean_{i: y_ic = +1} log(q_ic + 2 eps) ]

The unlabeled set is the whole batch and only "y == +1" is read, so an observed
negative (-1) trains exactly as an unknown (0): the PU premise. A class without a
positive in the batch has no positive term. The sum runs over classes, as the
authors' code (its scale grows with C).

    t_ic  = 1 if y_ic = +1 else sigmoid(z_ic) + eps             not detached, as VPU's code
    x~_k  = lam x_{A,pi(k)} + (1 - lam) x_{B,k}                 halves A = 0..h-1, B = ceil(B/2)..B-1
    L_reg = sum_c mean_k ( log(t~_kc + eps) - log(sigmoid(model(x~)_kc) + eps) )^2

with h = floor(B / 2) (an odd batch leaves its middle image out, as the authors'
code), pi a permutation of half A and then lam ~ Beta(mix_alpha, mix_alpha), in the
authors' order, both drawn per step from PyTorch's global CPU generator (checkpointed, so
a resumed run draws the same). The total is L_var + reg_weight * L_reg.

The epsilons are the authors' to the digit, which matters where the adaptive temperature
(T_c down to 0.01) saturates a sigmoid below about 1e-8: their L_var takes
log(exp(log(x + eps)) + eps) = log(x + 2 eps) in both terms, and their soft targets are
sigmoid + eps before mixing.

Under torchrun both terms are over the global batch, as in one process (the registry's
`whole_batch`): each process gathers the batch's logits and images, runs its share of
the h mixed pairs through the model and gathers their logits back (`WholeBatch`). The
authors' two-GPU run computed them on each GPU's own half instead.

Deviation (the authors' quirk: a batch with identical logits in a class has std 0
and divides by zero): T_c is floored at TEMPERATURE_FLOOR. A batch of one image
has no pair to mix: its L_reg is 0 and the model is not run again.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from config import LossHyper
from methods.base import ONE_PROCESS, SPMLLoss, Terms, WholeBatch

EPSILON = 1e-10  # inside the logs, as the authors' code
VAR_EPSILON = 2 * EPSILON  # L_var's: the authors take log(exp(log(x + eps)) + eps)
# The lowest temperature: reached only when alpha x std < 0.01, i.e. a class whose logits are
# (nearly) equal over the batch, where the authors' code divides by zero.
TEMPERATURE_FLOOR = 1e-2


def adaptive_temperature(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """T_c = clamp(alpha x population std over the batch, floor, 1), per class; carries no gradient."""
    spread = logits.detach().float().std(dim=0, unbiased=False)
    return (alpha * spread).clamp(min=TEMPERATURE_FLOOR, max=1.0)


def pu_variational(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """L_var, summed over classes (see the module docstring)."""
    z = logits.float()
    q = torch.sigmoid(z / adaptive_temperature(z, alpha))
    positive = (targets == 1).to(q.dtype)
    unlabeled_mean = q.mean(dim=0)
    with torch.no_grad():
        rebalance = unlabeled_mean ** gamma
    # 1 / n_P for classes with positives, 0 (no positive term) for the others: no division by zero
    per_positive = positive.sum(dim=0).reciprocal().nan_to_num(posinf=0.0)
    positive_term = (positive * torch.log(q + VAR_EPSILON)).sum(dim=0) * per_positive
    return (rebalance * torch.log(unlabeled_mean + VAR_EPSILON) - positive_term).sum()


def mixup_halves(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of half A (0..h-1) and half B (ceil(B/2)..B-1); an odd batch's middle image is in neither."""
    half = batch // 2
    return torch.arange(half), torch.arange(batch - half, batch)


def pu_mixup_regulariser(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         logits: torch.Tensor, targets: torch.Tensor, lam: float,
                         perm: torch.Tensor, whole: WholeBatch = ONE_PROCESS) -> torch.Tensor:
    """L_reg for a given lam and permutation `perm` of half A (see the module docstring); `whole` says
    which of the mixed pairs this process runs through the model."""
    first, second = mixup_halves(len(images))
    first, second = first.to(images.device), second.to(images.device)
    perm = perm.to(images.device)
    soft = torch.where(targets == 1, torch.ones_like(logits, dtype=torch.float32),
                       torch.sigmoid(logits.float()) + EPSILON)
    mine = whole.part(len(second))
    mixed_images = lam * images[first[perm][mine]] + (1 - lam) * images[second[mine]]
    mixed_targets = lam * soft[first][perm] + (1 - lam) * soft[second]
    mixed_logits = whole.gather(forward(mixed_images).float(), len(second))
    gap = torch.log(mixed_targets + EPSILON) - torch.log(torch.sigmoid(mixed_logits) + EPSILON)
    return (gap ** 2).mean(dim=0).sum()


class PULoss(SPMLLoss):
    """L_var in `forward`; the MixUp regulariser, which needs the model, in `extra_terms`."""

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "PULoss":
        return cls(hp.pu_alpha, hp.pu_gamma, hp.mix_alpha, hp.reg_weight)

    def __init__(self, alpha: float, gamma: float, mix_alpha: float, reg_weight: float):
        super().__init__()
        self.alpha, self.gamma, self.mix_alpha, self.reg_weight = alpha, gamma, mix_alpha, reg_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return {"main": pu_variational(logits, targets, self.alpha, self.gamma)}

    def extra_terms(self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    index: torch.Tensor, whole: WholeBatch = ONE_PROCESS) -> Terms:
        half = len(logits) // 2
        if half == 0 or self.reg_weight == 0:
            return {"reg": torch.zeros((), device=logits.device)}
        # drawn on the CPU generator whatever the device: the same draws on CPU and GPU runs (and on every process)
        perm = torch.randperm(half)  # before lam, as the authors' code draws them
        lam = float(torch.distributions.Beta(self.mix_alpha, self.mix_alpha).sample())
        return {"reg": self.reg_weight * pu_mixup_regulariser(model, whole.gather(images), logits, targets, lam, perm,
                                                              whole)}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, mix_alpha={self.mix_alpha}, reg_weight={self.reg_weight}"
