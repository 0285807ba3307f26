"""AEVLP's text graph (Tran et al., ICCV 2025): a frozen, randomly initialised graph network over the classes
that perturbs the CLIP text embeddings before DAMP scores the crops against them.

    t' = normalise(t + G3(LReLU(G2(LReLU(G1(t))))))    G_k(x) = A (x W_k), no bias, LeakyReLU slope 0.2

on the unnormalised class text embeddings t (C, D), with W1 (D, 2D), W2 (2D, 2D), W3 (2D, D)
drawn U(-1/sqrt(out), 1/sqrt(out)) and never trained (the authors' D = 512: 512 -> 1024 ->
1024 -> 512). Their weights come from an unseeded RNG, so each of their runs had another
graph; here they are drawn from a generator seeded with --text-graph-seed, so a run is
reproducible and its scores can be cached (the seed is part of the cache key).

The adjacency A comes from a C x C relation matrix R: keep the `topk` largest entries of each
row (the diagonal among them), zero the diagonal, divide each row by its sum, scale by
`reweight` (0.2) and set the diagonal to 1 - reweight, so each row sums to 1. The authors
ship R for each benchmark without saying how it was made; their files are symmetric with a
unit diagonal (to float rounding) and off-diagonals 0.43-0.97: cosine similarities of unit
vectors, as those of CLIP text embeddings of the class prompts are. So R is computed here from
the text embeddings themselves (negative cosines set to 0), or read from `--relation NPY`
(e.g. the authors' file). Fixed: a row with no positive neighbour (topk 1, or a relation row
of zeros) divided by zero into NaN there; here it keeps only its own node (diagonal 1).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from errors import UserError
from fileio import load_npy

LEAKY_SLOPE = 0.2


def load_relation(path: Path, num_classes: int) -> torch.Tensor:
    relation = load_npy(path, "pass a (num_classes, num_classes) .npy relation matrix")
    if relation.shape != (num_classes, num_classes) or relation.dtype.kind != "f":
        raise UserError(f"--relation {path} holds a {relation.dtype} array of shape {relation.shape}; expected "
                        f"floats of shape ({num_classes}, {num_classes}), one row and column per class")
    if not np.isfinite(relation).all():
        raise UserError(f"--relation {path} holds NaN or infinite values")
    return torch.from_numpy(relation.astype(np.float32))


def text_relation(text: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of the class text embeddings, negative ones set to 0."""
    unit = F.normalize(text.float(), dim=-1)
    return (unit @ unit.T).clamp(min=0)


def adjacency(relation: torch.Tensor, topk: int, reweight: float) -> torch.Tensor:
    """The graph's row-stochastic adjacency from a relation matrix (see the module docstring)."""
    chosen = torch.topk(relation, topk, dim=1).indices
    sparse = torch.zeros_like(relation).scatter_(1, chosen, relation.gather(1, chosen))
    sparse.fill_diagonal_(0)
    sums = sparse.sum(dim=1, keepdim=True)
    lonely = sums <= 0
    adj = torch.where(lonely, 0.0, sparse / torch.where(lonely, 1.0, sums) * reweight)
    return adj + torch.diag(torch.where(lonely.squeeze(1), 1.0, 1 - reweight))


def graph_weights(dim: int, seed: int) -> list[torch.Tensor]:
    """W1 (D, 2D), W2 (2D, 2D), W3 (2D, D), each U(-1/sqrt(out), 1/sqrt(out)), drawn in that order."""
    generator = torch.Generator().manual_seed(seed)
    shapes = ((dim, 2 * dim), (2 * dim, 2 * dim), (2 * dim, dim))
    return [(torch.rand(shape, generator=generator) * 2 - 1) / shape[1] ** 0.5 for shape in shapes]


@dataclass(frozen=True)
class TextGraph:
    seed: int = 0
    topk: int | None = None  # neighbours kept per class, itself included; None: every class
    reweight: float = 0.2
    relation: Path | None = None  # None: from the text embeddings

    def key(self) -> dict:
        """What the perturbed embeddings depend on besides the text: for the score cache's key."""
        source = hashlib.sha256(Path(self.relation).read_bytes()).hexdigest()[:16] if self.relation else "text cosines"
        return {"seed": self.seed, "topk": self.topk, "reweight": self.reweight, "relation": source}

    @torch.no_grad()
    def __call__(self, text: torch.Tensor) -> torch.Tensor:
        """t + G3(LReLU(G2(LReLU(G1(t))))) of the (C, D) text embeddings t, unnormalised, in fp32."""
        text = text.float()
        num_classes = text.shape[0]
        relation = load_relation(Path(self.relation), num_classes) if self.relation else text_relation(text)
        adj = adjacency(relation.to(text.device), self.topk or num_classes, self.reweight)
        hidden = text
        for layer, weight in enumerate(graph_weights(text.shape[1], self.seed)):
            hidden = adj @ (hidden @ weight.to(text.device))
            if layer < 2:
                hidden = F.leaky_relu(hidden, LEAKY_SLOPE)
        return text + hidden
