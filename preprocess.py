"""A backbone's input contract (size, normalisation), the image transforms built from it, and
the random choices of the train pipeline, drawn per image.

Every backbone factory returns its own `Preprocess` (models.py), so each model sees
the normalisation it was trained with: ImageNet's for ResNet / ConvNeXt, CLIP's own
for the CLIP towers (never ImageNet's: a trap of the VLPL reference).

`scale` turns on PU-MLC's multi-scale crop (Yuan, Zhang, Huang, ICME 2024; their
`--scaleSize`): resize to scale x scale, crop a random square whose side is drawn
uniformly from {scale, scale - 64, ..., scale / 2} (their {512, 448, 384, 320, 256}
for 512 and {640, ..., 320} for 640), resize that to size x size, flip. The authors
resize bicubic everywhere, at test time too, so `scale` does the same.

Random choices (`ImageDraws`) are a function of the run's seed, the epoch and the image's
row alone: an image gets the same flip and crop whichever process of a torchrun run and
whichever loader worker reads it, and a resumed epoch draws them again from the same three
numbers. Nothing about them is saved in a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CROP_STEP = 64  # the authors' crop sides are a multiple of 64 apart

# One stream per random choice of the train pipeline. A new choice (AEVLP's crop flips) takes the
# next key and a method of ImageDraws: the choices already there keep their values.
FLIP, SQUARE_CROP, CROP_FLIPS = 0, 1, 2


class ImageDraws:
    """Every random choice the train pipeline makes for one image in one epoch: the one place they are drawn.

    Choice k of image `index` at `epoch` comes from `numpy.random.default_rng([seed, epoch, index, k])`,
    a generator seeded by a SeedSequence hash of the four numbers: independent streams for every
    image, epoch and choice, the same in one process or many, with or without loader workers.
    """

    def __init__(self, seed: int, epoch: int, index: int):
        self.key = (seed, epoch, index)

    def _rng(self, choice: int) -> np.random.Generator:
        return np.random.default_rng([*self.key, choice])

    def flip(self) -> bool:
        """A horizontal flip, with probability 1/2."""
        return bool(self._rng(FLIP).random() < 0.5)

    def crop_flips(self, count: int) -> list[bool]:
        """`count` independent horizontal flips, one per crop (AEVLP's DAMP), each with probability 1/2."""
        return (self._rng(CROP_FLIPS).random(count) < 0.5).tolist()

    def square_crop(self, sides: tuple[int, ...], full: int) -> tuple[int, int, int]:
        """(side, top, left) of a square crop of a full x full image: the side uniform over `sides`, then its place."""
        rng = self._rng(SQUARE_CROP)
        side = int(sides[rng.integers(len(sides))])
        top, left = rng.integers(0, full - side + 1, size=2)
        return side, int(top), int(left)


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: int | None = None  # PU-MLC's multi-scale crop from a scale x scale resize; None: plain resize

    def transform(self, train: bool, hflip: bool) -> "Transform":
        """Resize to a square (multi-scale crop first with `scale`), flip at train time if the dataset allows it, normalise."""
        return Transform(self, crop=train and self.scale is not None, flip=train and hflip)


def crop_sides(scale: int) -> tuple[int, ...]:
    """The crop sides of PU-MLC's multi-scale crop: scale, scale - 64, ... down to scale / 2."""
    return tuple(range(scale, scale // 2 - 1, -CROP_STEP))


class Transform:
    """A PIL image -> a normalised (3, size, size) tensor; its random steps take their values from the image's
    `ImageDraws` (train time), the deterministic ones need none (evaluation, feature extraction)."""

    def __init__(self, pre: Preprocess, crop: bool, flip: bool):
        self.pre, self.crop, self.flip = pre, crop, flip

    @property
    def interpolation(self):
        # torchvision here, not at import: `import torchvision` costs seconds (torch._dynamo)
        from torchvision.transforms import InterpolationMode
        # the authors' multi-scale pipeline resizes bicubic, at test time too
        return InterpolationMode.BILINEAR if self.pre.scale is None else InterpolationMode.BICUBIC

    @property
    def random(self) -> bool:
        return self.crop or self.flip

    @property
    def shape(self) -> tuple[int, ...]:
        """What it makes of an image."""
        return (3, self.pre.size, self.pre.size)

    def __call__(self, image: Image.Image, draws: ImageDraws | None = None) -> torch.Tensor:
        if self.random and draws is None:
            raise ValueError("a train transform with random steps needs the image's draws")
        from torchvision.transforms import functional as F  # as in `interpolation`
        pre, interpolation = self.pre, self.interpolation
        if self.crop:
            image = F.resize(image, [pre.scale, pre.scale], interpolation)
            side, top, left = draws.square_crop(crop_sides(pre.scale), pre.scale)
            image = F.crop(image, top, left, side, side)
        image = F.resize(image, [pre.size, pre.size], interpolation)
        if self.flip and draws.flip():
            image = F.hflip(image)
        return F.normalize(F.to_tensor(image), pre.mean, pre.std)

    def __repr__(self) -> str:
        steps = ([f"resize {self.pre.scale}, square crop of a side in {crop_sides(self.pre.scale)}"] if self.crop
                 else []) + [f"resize {self.pre.size}"] + (["flip"] if self.flip else [])
        return f"{type(self).__name__}({', '.join(steps)}, {self.interpolation.value})"
