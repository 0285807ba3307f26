"""The GPR loss of AEVLP (Tran et al., "More Reliable Pseudo-labels, Better Performance: A Generalized
Approach to Single Positive Multi-label Learning", ICCV 2025), on DAMP's pseudo-positives.

With p = sigmoid(logit), the GR schedule's k(p') and v(p') on detached p' (methods/gr.py) and
the pseudo-label q of each entry (damp.py), per entry:

    observed positive          -log p                                     (q ignored)
    unknown, q = 0             GR's v [k L2(p) + (1 - k) L3(p)]
    unknown, q = 1             (1 - v') [rho (-log p) + (1 - rho) (-log(1 - p))]
                               v' = min(max(v, 1 - lambda1), 1 - lambda2): a weight in [lambda2, lambda1]
    observed negative          v (-log(1 - p))

averaged over the B x C entries, plus reg (mean_i sum_c p_ic - k)^2 / C^2 (Cole et al.'s
expected-positive regulariser, with gradient), -log(x + 1e-7) as the authors. Without
pseudo-labels (`--pseudo-labels off`) it is GR plus that regulariser (the GR schedule with
GPR's ranges). An observed negative, which single-positive labels never have, keeps its
weighted term with or without pseudo-labels (the authors' code drops it without them).

The pseudo-labels are computed at every step, from the cached per-crop CLIP cosines of
the crops the sample's view drew (damp.crop_rows): the same draws as the authors' per-step
CLIP forwards, without the forwards.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from config import LossHyper
from errors import UserError
from methods.aevlp.damp import CropGrid, crop_rows, damp_pseudo_labels
from methods.aevlp.text_graph import TextGraph
from methods.base import Terms, expected_positive_reg, per_code, reduce
from methods.gr import CLASSIFIER_LR_MULT, GR_LOG_EPSILON, GRLoss, gr_terms
from presets import AEVLP_CLIP_MODEL, AEVLP_SETTINGS

log = logging.getLogger(__name__)

STATS_CHUNK = 4096  # images per chunk of the pseudo-label count logged at set-up


def loss_gpr(logits: torch.Tensor, targets: torch.Tensor, pseudo: torch.Tensor | None, w: torch.Tensor | float,
             b: torch.Tensor | float, mu: torch.Tensor | float, sigma: torch.Tensor | float, q2: float, q3: float,
             lam: tuple[float, float], rho: float, reg: float, expected_pos: float) -> Terms:
    """The GPR loss of a batch; `pseudo` (B, C) in {0, 1}, or None without pseudo-labels."""
    p, v, unknown = gr_terms(logits, w, b, mu, sigma, q2, q3)
    positive, negative = -torch.log(p + GR_LOG_EPSILON), -torch.log(1 - p + GR_LOG_EPSILON)
    if pseudo is not None:
        # the authors' order: first the floor 1 - lambda1, then the ceiling 1 - lambda2
        clamped = v.clamp(min=1 - lam[0]).clamp(max=1 - lam[1])
        unknown = torch.where(pseudo == 1, (1 - clamped) * (rho * positive + (1 - rho) * negative), unknown)
    return {"main": reduce(per_code(targets, positive, unknown, v * negative)),
            "reg": reg * expected_positive_reg(p, expected_pos)}


def gpr_defaults(preset) -> dict:
    """GPR's run defaults (`LossEntry.defaults`): GR's x10 classifier lr, AEVLP's CLIP, and the AEVLP
    authors' settings of the benchmark (presets.AEVLP_SETTINGS)."""
    return {"classifier_lr_mult": CLASSIFIER_LR_MULT, "clip_model": AEVLP_CLIP_MODEL,
            **AEVLP_SETTINGS.get(preset.name, {})}


class GPRLoss(GRLoss):
    """GPR with the GR schedule's buffers; DAMP's per-crop CLIP cosines as a buffer that is not checkpointed
    (the score cache on disk holds them)."""

    @classmethod
    def from_hyper(cls, hp: LossHyper, num_examples: int, num_classes: int) -> "GPRLoss":
        for flag, value in (("--damp-top-k", hp.damp_top_k), ("--text-graph-topk", hp.text_graph_topk)):
            if hp.pseudo_labels == "damp" and value is not None and value > num_classes:
                raise UserError(f"{flag} {value} is more than the dataset's {num_classes} classes; "
                                f"pass at most {num_classes}")
        return cls(hp, num_examples, num_classes)

    def __init__(self, hp: LossHyper, num_examples: int, num_classes: int):
        super().__init__(hp.epochs, hp.gr_beta, hp.gr_alpha, hp.gr_q2q3)
        self.hp, self.num_examples = hp, num_examples
        self.needs_clip_scores = hp.pseudo_labels == "damp"
        self.crops = CropGrid(hp.damp_grid, hp.damp_norm)
        self.crop_flips = self.crops.count if self.needs_clip_scores else 0
        self.register_buffer("cosines", torch.zeros(0, num_classes, dtype=torch.float16), persistent=False)
        self.observed = torch.zeros(0, num_classes)

    def clip_scoring(self) -> dict:
        hp = self.hp
        graph = None if hp.text_graph == "off" else \
            TextGraph(hp.text_graph_seed, hp.text_graph_topk, hp.text_graph_reweight, hp.relation)
        return {"crops": self.crops, "text_graph": graph, "dtype": np.float16}

    def attach_train_labels(self, targets: torch.Tensor) -> None:
        self.observed = targets  # for the pseudo-label count logged by set_clip_cosines

    def set_clip_cosines(self, cosines: np.ndarray | torch.Tensor) -> None:
        """The cached cosines of every crop of every training image in each orientation, (O x K x N, C)."""
        cosines = torch.as_tensor(cosines)
        per_orientation = self.crops.count * self.num_examples
        if cosines.ndim != 2 or cosines.shape[1] != self.cosines.shape[1] or \
                cosines.shape[0] not in (per_orientation, 2 * per_orientation):
            raise ValueError(f"CLIP cosines of shape {tuple(cosines.shape)} do not fit {self.num_examples} images x "
                             f"{self.crops.count} crops (x 1 or 2 orientations) x {self.cosines.shape[1]} classes")
        self.cosines = cosines.to(self.cosines.device, torch.float16)
        observed, device = self.observed.to(self.cosines.device), self.cosines.device
        new = sum((self.pseudo_labels(observed[rows], rows.to(device)) * (observed[rows] == 0)).sum().item()
                  for rows in torch.arange(self.num_examples).split(STATS_CHUNK))
        hp = self.hp
        log.info(f"DAMP pseudo-labels (grid {hp.damp_grid}, T={hp.damp_temp:g}, eta={hp.damp_eta:g}, threshold="
                 f"{hp.damp_threshold:g}, top-k {hp.damp_top_k}, negative ratio {hp.damp_neg_ratio:g}): "
                 f"{new / self.num_examples:.2f} pseudo-positives per image on unknown labels (unflipped crops)")

    def pseudo_labels(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, C) DAMP pseudo-labels of the batch's views, from the cache."""
        hp, count = self.hp, self.crops.count
        rows = crop_rows(index, self.num_examples, count, self.cosines.shape[0] // (count * self.num_examples))
        return damp_pseudo_labels(self.cosines[rows], targets, hp.damp_temp, hp.damp_eta, hp.damp_threshold,
                                  hp.damp_top_k, hp.damp_neg_ratio)

    def start_epoch(self, epoch: int, score_train) -> None:
        if self.needs_clip_scores and self.cosines.shape[0] == 0:
            raise RuntimeError("GPR loss used before set_clip_cosines()")
        super().start_epoch(epoch, score_train)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Terms:
        hp = self.hp
        pseudo = self.pseudo_labels(targets, index) if self.needs_clip_scores else None
        return loss_gpr(logits, targets, pseudo, self.w, self.b, self.mu, self.sigma, self.q2, self.q3, hp.gpr_lam,
                        hp.gpr_rho, hp.gpr_reg, hp.expected_pos)
