"""DAMP pseudo-labels (AEVLP, Tran et al., ICCV 2025): CLIP scores of an image and of the tiles of a grid over it.

The crops of an image: crop 0 is the whole image, crops 1..g^2 the tiles of a g x g grid
in row-major order (tile (x, y) is crop 1 + y g + x), box [x tw, y th, (x+1) tw, (y+1) th)
with tw = W // g, th = H // g (the remainder on the right and bottom is dropped); each
crop is resized (squashed) to CLIP's input side, bilinear, and normalised with ImageNet's
mean/std as the authors' (or CLIP's own, `--damp-norm clip`). The authors flip every crop
on its own at random at every step; here the CLIP cosines of each crop are cached in both
orientations (methods/vlpl/scores.py) and the train set draws the flips of every crop of
every sample (datasets.ImageFiles.view_index), which `crop_rows` turns into rows of the cache.

The rule, per image, from S_k = softmax_c(cos_k / tau) of each crop k (in fp32):

    G = S_0                           the whole image
    alpha, beta, m = max, min, mean of S_1..S_g^2 over the tiles, per class
    eta' = min(G at the observed positive, eta)
    A_c = alpha_c if alpha_c > eta' else beta_c;  F = (G + A) / 2
    pseudo-positive: among the top_k classes by F, those with F >= threshold
    then the int(neg_ratio C) classes with the lowest (G + m) / 2 are set back to 0

The last step is the authors' "negative pseudo-labels": they are written as 0, not -1, so
the step can only remove a positive. The output is in {0, 1}.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from errors import UserError
from models import IMAGENET_MEAN, IMAGENET_STD
from preprocess import ImageDraws, Preprocess, Transform



@dataclass(frozen=True)
class CropGrid:
    """What CLIP scores of each training image for DAMP: the whole image and the tiles of a grid."""

    grid: int
    norm: str = "imagenet"  # the CLIP input's mean/std: ImageNet's (the authors') or CLIP's own

    @property
    def count(self) -> int:
        return self.grid ** 2 + 1

    def boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        tile_w, tile_h = width // self.grid, height // self.grid
        tiles = [(x * tile_w, y * tile_h, (x + 1) * tile_w, (y + 1) * tile_h)
                 for y in range(self.grid) for x in range(self.grid)]
        return [(0, 0, width, height), *tiles]

    def transform(self, clip: Preprocess) -> "CropsTransform":
        """PIL image -> (count, 3, s, s): every crop resized to CLIP's side s and normalised per `norm`."""
        if self.norm == "imagenet":
            clip = Preprocess(clip.size, IMAGENET_MEAN, IMAGENET_STD)
        return CropsTransform(self, clip.transform(train=False, hflip=False))

    def check_sizes(self, paths: np.ndarray) -> None:
        """Every image has at least `grid` pixels a side (a tile of zero pixels cannot be scored)."""
        for path in paths:
            try:
                with Image.open(path) as image:  # reads the header only
                    width, height = image.size
            except OSError:
                continue  # unreadable: reported by the loader with its path
            if min(width, height) < self.grid:
                raise UserError(f"--damp-grid {self.grid} is larger than the image {path} ({width} x {height} px): "
                                f"every tile needs at least one pixel; pass a smaller --damp-grid")


class CropsTransform:
    """A PIL image -> its crops, each through `each` (deterministic: the crops are scored once, unflipped)."""

    def __init__(self, grid: CropGrid, each: Transform):
        self.grid, self.each = grid, each
        self.shape = (grid.count, *each.shape)

    def __call__(self, image: Image.Image, draws: ImageDraws | None = None) -> torch.Tensor:
        return torch.stack([self.each(image.crop(box)) for box in self.grid.boxes(*image.size)])


def crop_rows(index: torch.Tensor, num_examples: int, count: int, orientations: int) -> torch.Tensor:
    """(B, count) rows of the (orientations x count x N, C) score table for the crops each sample's view saw.

    Row (o count + k) N + i holds crop k of image i in orientation o (1: mirrored); the view
    index is i + N x code, bit 1 + k of code the flip drawn for crop k (datasets.ImageFiles.view_index).
    """
    image = (index % num_examples).unsqueeze(1)
    crop = torch.arange(count, device=index.device)
    orientation = ((index // num_examples).unsqueeze(1) >> (crop + 1)) & 1 if orientations == 2 else 0
    return (orientation * count + crop) * num_examples + image


def damp_rule(scores: torch.Tensor, observed: torch.Tensor, eta: float, threshold: float, top_k: int,
              num_negatives: int) -> torch.Tensor:
    """(B, C) pseudo-labels in {0, 1} from the per-crop softmax scores (B, 1 + g^2, C); see the module docstring."""
    whole, tiles = scores[:, 0], scores[:, 1:]
    high, low, mean = tiles.amax(dim=1), tiles.amin(dim=1), tiles.mean(dim=1)
    positive_score = (whole * (observed == 1)).amax(dim=1, keepdim=True)
    gate = torch.clamp(positive_score, max=eta)
    final = (whole + torch.where(high > gate, high, low)) / 2
    values, chosen = torch.topk(final, top_k, dim=1)
    labels = torch.zeros_like(final).scatter_(1, chosen, (values >= threshold).to(final.dtype))
    if num_negatives > 0:
        lowest = torch.topk((whole + mean) / 2, num_negatives, dim=1, largest=False).indices
        labels.scatter_(1, lowest, 0.0)
    return labels


def damp_pseudo_labels(cosines: torch.Tensor, observed: torch.Tensor, temp: float, eta: float, threshold: float,
                       top_k: int, neg_ratio: float) -> torch.Tensor:
    """(B, C) pseudo-labels from the per-crop CLIP cosines (B, 1 + g^2, C), in fp32 whatever the cache holds."""
    scores = torch.softmax(cosines.float() / temp, dim=-1)
    return damp_rule(scores, observed, eta, threshold, top_k, int(neg_ratio * cosines.shape[-1]))
