"""PU-MLC's classification head (Yuan, Zhang, Huang, ICME 2024; SSGRL-style): semantic
decoupling of the feature map guided by class word vectors, a gated graph network over the
label co-occurrence graph of the observed training labels, and a per-class output layer.

    feature map [B, Cf, H, W] -> AvgPool 2x2 -> 1x1 conv Cf -> 1024 (no bias) + BN -> F [B, 1024, h, w]
    e_pc  = fc4(fc3(tanh(fc1(F_p) * fc2(w_c))))    fc1 1024->512, fc2 D->512 (no bias), fc3 512->512, fc4 512->1
    S_c   = sum_p softmax_p(e_pc) F_p              [B, C, 1024]
    GGNN, 3 steps from h = S (weights shared):  m = [A h ; A^T h]; z = sig(W_z m + U_z h); r = sig(W_r m + U_r h);
          h~ = tanh(W_h m + U_h (r * h)); h = (1 - z) h + z h~
    O_c   = tanh(Linear 2048->1024 ([h_c ; S_c])); logit_c = <W_c, O_c> + b_c   (W, b ~ U(-1/32, 1/32))

The graph: N_ij = #train images with observed +1 on both i and j, A_ij = N_ij / N_ii.
A class with no observed positive (common with single-positive labels) gives a NaN row in
the authors' code, which poisons every node; here its row is the identity's (the class
hears only itself). Word vectors: a (C, D) .npy file in class order (GloVe-like, D = 300).
The authors read a ResNet's layer4; here the head reads the map of any backbone that has one
(nets/backbones.py), at least 2 x 2 for its pooling.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from errors import UserError
from fileio import load_npy

HIDDEN, ATTENTION, STEPS = 1024, 512, 3
OUTPUT_INIT = 1.0 / 32


def cooccurrence_graph(targets: np.ndarray) -> np.ndarray:
    """A_ij = P(observed +1 on j | observed +1 on i) over the train rows; identity rows for unseen classes."""
    positive = (np.asarray(targets) == 1).astype(np.float64)
    counts = positive.T @ positive
    diagonal = np.diag(counts).copy()
    seen = diagonal > 0
    graph = np.where(seen[:, None], counts / np.where(seen, diagonal, 1.0)[:, None], 0.0)
    graph[~seen, ~seen] = 1.0
    return graph.astype(np.float32)


def load_word_vectors(path, num_classes: int) -> np.ndarray:
    """The (num_classes, D) float32 class word vectors of `path`; anything else is one line naming what is wrong."""
    vectors = load_npy(path, "pass a (num_classes, D) .npy of class word vectors, e.g. GloVe, in class order")
    if vectors.dtype.kind not in "fiu":
        raise UserError(f"--word-vectors {path} holds {vectors.dtype} values, not numbers: save the vectors as a "
                        f"float array of shape ({num_classes}, D)")
    if vectors.ndim != 2 or vectors.shape[0] != num_classes or vectors.shape[1] == 0:
        raise UserError(f"--word-vectors {path} has shape {vectors.shape}; expected ({num_classes}, D) with D >= 1, "
                        f"one row per class")
    if not np.isfinite(vectors).all():
        row = int(np.argwhere(~np.isfinite(vectors))[0][0])
        raise UserError(f"--word-vectors {path} holds NaN or infinite values (first in row {row}); re-export them")
    return vectors.astype(np.float32)


class SemanticDecoupling(nn.Module):
    def __init__(self, dim: int, word_dim: int, inter: int = ATTENTION):
        super().__init__()
        self.fc1 = nn.Linear(dim, inter, bias=False)
        self.fc2 = nn.Linear(word_dim, inter, bias=False)
        self.fc3 = nn.Linear(inter, inter)
        self.fc4 = nn.Linear(inter, 1)

    def forward(self, features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """features [B, P, dim], words [C, word_dim] -> per-class features [B, C, dim]."""
        joint = torch.tanh(self.fc1(features).unsqueeze(2) * self.fc2(words))  # [B, P, C, inter]
        attention = torch.softmax(self.fc4(self.fc3(joint)).squeeze(-1), dim=1)  # over the positions
        return torch.einsum("bpc,bpd->bcd", attention, features)


class GatedGNN(nn.Module):
    def __init__(self, dim: int, steps: int = STEPS):
        super().__init__()
        self.steps = steps
        self.w_z, self.w_r, self.w_h = (nn.Linear(2 * dim, dim) for _ in range(3))
        self.u_z, self.u_r, self.u_h = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, nodes: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        hidden = nodes
        for _ in range(self.steps):
            message = torch.cat([graph @ hidden, graph.T @ hidden], dim=-1)  # "in" and "out" edges
            update = torch.sigmoid(self.w_z(message) + self.u_z(hidden))
            reset = torch.sigmoid(self.w_r(message) + self.u_r(hidden))
            candidate = torch.tanh(self.w_h(message) + self.u_h(reset * hidden))
            hidden = (1 - update) * hidden + update * candidate
        return hidden


class SSGRLHead(nn.Module):
    """A feature map [B, Cf, H, W] -> logits [B, C]."""

    def __init__(self, feature_channels: int, word_vectors: np.ndarray, graph: np.ndarray, dim: int = HIDDEN):
        super().__init__()
        num_classes = len(word_vectors)
        self.pool = nn.AvgPool2d(2, stride=2)
        self.reduce = nn.Sequential(nn.Conv2d(feature_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.register_buffer("word_vectors", torch.as_tensor(word_vectors))  # frozen, as the authors'
        self.register_buffer("graph", torch.as_tensor(graph))
        self.decouple = SemanticDecoupling(dim, word_vectors.shape[1])
        self.gnn = GatedGNN(dim)
        self.output = nn.Linear(2 * dim, dim)
        self.class_weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-OUTPUT_INIT, OUTPUT_INIT))
        self.class_bias = nn.Parameter(torch.empty(num_classes).uniform_(-OUTPUT_INIT, OUTPUT_INIT))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        features = self.reduce(self.pool(feature_map)).flatten(2).transpose(1, 2)  # [B, P, dim]
        per_class = self.decouple(features, self.word_vectors)
        hidden = self.gnn(per_class, self.graph)
        out = torch.tanh(self.output(torch.cat([hidden, per_class], dim=-1)))
        return (out * self.class_weight).sum(-1) + self.class_bias
