"""The heads: a backbone's feature map [B, D, H, W] -> one logit per class [B, C] (`--head`,
registered in `nets/__init__.py`).

    linear   the backbone's own global pooling (nets/backbones.py), then one linear layer: the
             model of the references, and the default
    cam      class activation maps: a 1x1 convolution with bias, one map per class; the logit is
             the spatial mean of its map. On an average-pooled backbone (the ResNets) it is `linear`
             up to float rounding (the mean commutes with the 1x1 conv), and from one seed it starts
             from the same weights (a 1x1 conv draws its initial weights as nn.Linear does)
    boostlu  BoostLU (Kim et al., CVPR 2023): `cam` with every positive CAM value multiplied by
             alpha (`--boost-alpha`, the authors' 5) before the spatial mean, at training and at test
             time, as the authors' code; alpha = 1 is `cam`
    ssgrl    PU-MLC's semantic decoupling and gated graph network (Yuan et al. 2024; nets/ssgrl.py)

On `digits_cnn`, whose own pooling is a max, `linear` keeps the max and `cam` / `boostlu` take
the mean of the maps, as BoostLU does on a ResNet.
"""
from __future__ import annotations

import torch
from torch import nn

from nets import BOOST_ALPHA
from nets.ssgrl import SSGRLHead


class CamHead(nn.Module):
    """Class activation maps, one per class, averaged over the map's positions."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(feature_dim, num_classes, 1)

    def cams(self, feature_map: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W] -> the maps whose mean is each class's logit, [B, C, H, W]."""
        return self.conv(feature_map)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.cams(feature_map).mean(dim=(2, 3))


class BoostLUHead(CamHead):
    """CAM' = alpha CAM where CAM > 0, else CAM (Kim et al. 2023); logits = the spatial mean of CAM'."""

    def __init__(self, feature_dim: int, num_classes: int, alpha: float = BOOST_ALPHA):
        super().__init__(feature_dim, num_classes)
        self.alpha = alpha

    def cams(self, feature_map: torch.Tensor) -> torch.Tensor:
        cams = self.conv(feature_map)
        return torch.where(cams > 0, cams * self.alpha, cams)


def ssgrl_head(feature_dim: int, num_classes: int, word_vectors: torch.Tensor, graph: torch.Tensor) -> SSGRLHead:
    """PU-MLC's head, built as every head (its class count is that of its word vectors)."""
    return SSGRLHead(feature_dim, word_vectors, graph)
