"""GR loss (Chen et al., "Boosting Single Positive Multi-label Classification with Generalized
Robust Loss", IJCAI 2024).

With p = sigmoid(logit) and p' = p detached, per entry:

    observed positive  -log p
    unknown            v(p') [k(p') L2(p) + (1 - k(p')) L3(p)]
        L2(p) = (1 - p^q2) / q2         robust loss toward 1 (MAE-like for small q2)
        L3(p) = (1 - (1 - p)^q3) / q3   robust loss toward 0 (q3 = 1: MAE, p)
        k(p)  = sigmoid(w p + b)        soft pseudo-label: how likely a missing positive
        v(p)  = exp(-(p - mu)^2 / (2 sigma^2))   instance- and class-aware weight

summed and divided by B x C. The four parameters move linearly over the T epochs of the
run as in the authors' train.py (yan4xi1/GRLoss, no linear warm-up), at epoch e (1-based):

    (w, b)      = start + (end - start) (e - 1) / T    by default from (0, -2) toward (2, -2)
    (mu, sigma) = start + (end - start) e / T          by default from (0.5, 2) to (0.8, 0.5)

so (w, b) are one step behind (mu, sigma), exactly as there. The ranges and (q2, q3) are the flags
--gr-beta W0 WT B0 BT, --gr-alpha MU0 SIGMA0 MUT SIGMAT and --gr-q2q3 Q2 Q3 (the authors' --beta, --alpha,
--q2q3, renamed: spml's --alpha / --beta are EM's and APL's weights). w, b, mu, sigma are buffers of the loss,
set by `start_epoch`, and `state_dict()` checkpoints them. The authors' epsilon inside the
log is 1e-7, not Cole et al.'s 1e-5. p^q2 and (1 - p)^q3 are computed as exp(q logsigmoid(.)),
equal in value, so the gradient stays finite where p rounds to 0 or 1.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from config import LossHyper
from methods.base import SPMLLoss, Terms, per_code, reduce

GR_LOG_EPSILON = 1e-7  # the authors' neg_log
CLASSIFIER_LR_MULT = 10.0  # the authors' `lr_mult` on the final layer, as Kim et al.'s


def gr_defaults(preset) -> dict:
    """GR's run defaults (`LossEntry.defaults`): the x10 classifier lr."""
    return {"classifier_lr_mult": CLASSIFIER_LR_MULT}


def gr_schedule(epoch: int, epochs: int, beta: tuple[float, ...] = LossHyper.gr_beta,
                alpha: tuple[float, ...] = LossHyper.gr_alpha) -> dict[str, float]:
    """w, b, mu, sigma at `epoch` (1-based) of a run of `epochs`, the authors' linear interpolation.

    `beta` = (w0, wT, b0, bT) and `alpha` = (mu0, sigma0, muT, sigmaT), in the authors' order;
    the defaults are their config.py's (--gr-beta, --gr-alpha)."""
    (w0, w_end, b0, b_end), (mu0, sigma0, mu_end, sigma_end) = beta, alpha

    def lerp(start: float, end: float, step: int) -> float:
        return start + (end - start) * max(step, 0) / epochs

    return {"w": lerp(w0, w_end, epoch - 1), "b": lerp(b0, b_end, epoch - 1),
            "mu": lerp(mu0, mu_end, epoch), "sigma": lerp(sigma0, sigma_end, epoch)}


def gr_terms(logits: torch.Tensor, w: torch.Tensor | float, b: torch.Tensor | float, mu: torch.Tensor | float,
             sigma: torch.Tensor | float, q2: float, q3: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per entry: p, the weight v(p') (no gradient) and GR's loss of an unknown entry."""
    p = torch.sigmoid(logits)
    fixed = p.detach()
    k = torch.sigmoid(w * fixed + b)
    v = torch.exp(-((fixed - mu) ** 2) / (2 * sigma ** 2))
    toward_one = (1 - torch.exp(q2 * F.logsigmoid(logits))) / q2
    toward_zero = (1 - torch.exp(q3 * F.logsigmoid(-logits))) / q3
    return p, v, v * (k * toward_one + (1 - k) * toward_zero)


def loss_gr(logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor | float, b: torch.Tensor | float,
            mu: torch.Tensor | float, sigma: torch.Tensor | float, q2: float = LossHyper.gr_q2q3[0],
            q3: float = LossHyper.gr_q2q3[1]) -> Terms:
    """The GR loss of a batch with the given schedule values; observed negatives (-1) -log(1 - p)."""
    p, _, unknown = gr_terms(logits, w, b, mu, sigma, q2, q3)
    return {"main": reduce(per_code(targets, -torch.log(p + GR_LOG_EPSILON), unknown,
                                    -torch.log(1 - p + GR_LOG_EPSILON)))}


class GRLoss(SPMLLoss):
    """GR loss with its epoch-scheduled (w, b, mu, sigma) as buffers."""

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "GRLoss":
        return cls(hp.epochs, hp.gr_beta, hp.gr_alpha, hp.gr_q2q3)

    def __init__(self, epochs: int, beta: tuple[float, ...] = LossHyper.gr_beta,
                 alpha: tuple[float, ...] = LossHyper.gr_alpha, q2q3: tuple[float, ...] = LossHyper.gr_q2q3):
        super().__init__()
        self.epochs, self.beta, self.alpha = epochs, tuple(beta), tuple(alpha)
        self.q2, self.q3 = q2q3
        for name, value in gr_schedule(1, epochs, self.beta, self.alpha).items():
            self.register_buffer(name, torch.tensor(value))

    def start_epoch(self, epoch: int, score_train: Callable[[], torch.Tensor]) -> None:
        for name, value in gr_schedule(epoch, self.epochs, self.beta, self.alpha).items():
            getattr(self, name).fill_(value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        return loss_gr(logits, targets, self.w, self.b, self.mu, self.sigma, self.q2, self.q3)

    def extra_repr(self) -> str:
        return (f"epochs={self.epochs}, w={self.w.item():g}, b={self.b.item():g}, mu={self.mu.item():g}, "
                f"sigma={self.sigma.item():g}, q2={self.q2:g}, q3={self.q3:g}")
