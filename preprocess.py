"""A backbone's input contract (size, normalisation) and the image transforms built from it.

Every backbone factory returns its own `Preprocess` (models.py), so each model sees
the normalisation it was trained with: ImageNet's for ResNet / ConvNeXt, CLIP's own
for the CLIP towers (never ImageNet's: a trap of the VLPL reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torchvision import transforms as T


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transform(self, train: bool, hflip: bool) -> Callable:
        """Resize to a square, flip at train time if the dataset allows it, normalise."""
        steps = [T.Resize((self.size, self.size))]
        if train and hflip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)
