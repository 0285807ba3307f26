"""A backbone's input contract (size, normalisation) and the image transforms built from it.

Every backbone factory returns its own `Preprocess` (models.py), so each model sees
the normalisation it was trained with: ImageNet's for ResNet / ConvNeXt, CLIP's own
for the CLIP towers (never ImageNet's: a trap of the VLPL reference).

`scale` turns on PU-MLC's multi-scale crop (Yuan, Zhang, Huang, ICME 2024; their
`--scaleSize`): resize to scale x scale, crop a random square whose side is drawn
uniformly from {scale, scale - 64, ..., scale / 2} (their {512, 448, 384, 320, 256}
for 512 and {640, ..., 320} for 640), resize that to size x size, flip. The authors
resize bicubic everywhere, at test time too, so `scale` does the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision import transforms as T

CROP_STEP = 64  # the authors' crop sides are a multiple of 64 apart


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: int | None = None  # PU-MLC's multi-scale crop from a scale x scale resize; None: plain resize

    def transform(self, train: bool, hflip: bool) -> Callable:
        """Resize to a square (multi-scale crop first with `scale`), flip at train time if the dataset allows it, normalise."""
        if self.scale is None:
            steps = [T.Resize((self.size, self.size))]
        else:
            bicubic = T.InterpolationMode.BICUBIC
            steps = [T.Resize((self.size, self.size), interpolation=bicubic)]
            if train:
                steps = [T.Resize((self.scale, self.scale), interpolation=bicubic),
                         RandomSquareCrop(crop_sides(self.scale)), *steps]
        if train and hflip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)


def crop_sides(scale: int) -> tuple[int, ...]:
    """The crop sides of PU-MLC's multi-scale crop: scale, scale - 64, ... down to scale / 2."""
    return tuple(range(scale, scale // 2 - 1, -CROP_STEP))


class RandomSquareCrop(torch.nn.Module):
    """A random square crop whose side is drawn uniformly from `sides`.

    The side comes from torch's RNG (as the crop's position), not Python's `random`
    that torchvision's RandomChoice uses, so one seed fixes both, with or without workers.
    """

    def __init__(self, sides: tuple[int, ...]):
        super().__init__()
        self.crops = [T.RandomCrop(side) for side in sides]

    def forward(self, image):
        return self.crops[int(torch.randint(len(self.crops), ()))](image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sides={[c.size[0] for c in self.crops]})"
