"""Backbone registry and the multi-label model: pooled features -> one linear layer -> logits.

Each registered factory returns a `Backbone`: the feature extractor (images ->
(B, D) pooled features), its feature size and its own preprocessing (input size,
mean, std), so a backbone always sees the normalisation it was trained with.

    @register_backbone("name")
    def _name(pretrained: bool) -> Backbone: ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tv
from torchvision import transforms as T

from errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


@dataclass
class Backbone:
    features: nn.Module  # images -> (B, feature_dim)
    feature_dim: int
    preprocess: Preprocess


@dataclass(frozen=True)
class BackboneEntry:
    factory: Callable[[bool], Backbone]
    has_pretrained: bool  # whether pretrained weights exist for it at all


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, has_pretrained: bool = True):
    def wrap(factory: Callable[[bool], Backbone]):
        BACKBONES[name] = BackboneEntry(factory, has_pretrained)
        return factory

    return wrap


def create_backbone(name: str, pretrained: bool) -> Backbone:
    if name not in BACKBONES:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name].factory(pretrained and BACKBONES[name].has_pretrained)


class MultiLabelModel(nn.Module):
    """Backbone features followed by one linear layer; outputs one logit per class."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone.features
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        self.preprocess = backbone.preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))


def load_torchvision_weights(weights) -> dict:
    """State dict of a torchvision weights enum entry, from the torch hub cache or the network."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    where = f"put {cache.name} (from {weights.url}) in {cache.parent}/, or pass --no-pretrained"
    if not cache.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"pretrained weights not in the local cache and HF_HUB_OFFLINE=1: {where}")
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # no network, proxy refusal, truncated download...
        raise UserError(f"cannot load pretrained weights ({type(err).__name__}): {where}") from err


def _torchvision_resnet(arch: str, weights_enum, pretrained: bool) -> Backbone:
    net = getattr(tv, arch)(weights=None)
    if pretrained:
        # IMAGENET1K_V1 is what `pretrained=True` loaded in the reference code.
        net.load_state_dict(load_torchvision_weights(weights_enum.IMAGENET1K_V1))
    dim = net.fc.in_features
    net.fc = nn.Identity()  # the torchvision forward ends with global average pooling + flatten
    return Backbone(net, dim, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD))


@register_backbone("resnet50")
def _resnet50(pretrained: bool) -> Backbone:
    return _torchvision_resnet("resnet50", tv.ResNet50_Weights, pretrained)


@register_backbone("resnet18")
def _resnet18(pretrained: bool) -> Backbone:
    return _torchvision_resnet("resnet18", tv.ResNet18_Weights, pretrained)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("digits_cnn", has_pretrained=False)
def _digits_cnn(pretrained: bool) -> Backbone:
    """A small CNN for the 24x24 digit mosaics: fast on a CPU, trained from scratch.

    Max pooling (not average) at the end: a digit in one cell of the 3x3 grid
    must light up its class wherever it sits.
    """
    net = nn.Sequential(
        _conv_block(3, 16), _conv_block(16, 16), nn.MaxPool2d(2),  # 24 -> 12
        _conv_block(16, 32), _conv_block(32, 32), nn.MaxPool2d(2),  # 12 -> 6
        _conv_block(32, 64),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
    )
    return Backbone(net, 64, Preprocess(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
