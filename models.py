"""Backbone registry and the multi-label model: pooled features -> one linear layer -> logits.

Each registered factory returns a `Backbone`: the feature extractor (images ->
(B, D) pooled features), its feature size and its own preprocessing (input size,
mean, std), so a backbone always sees the normalisation it was trained with.

    @register_backbone("name")
    def _name(pretrained: bool) -> Backbone: ...

`--pretrained-weights PATH` loads a local checkpoint into any backbone instead
(`load_backbone_checkpoint`); `clip_vision` also takes the CLIP model spec.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tv

from errors import UserError
from fileio import load_torch
from methods.vlpl.towers import ClipSpec, clip_preprocess, create_clip
from preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    features: nn.Module  # images -> (B, feature_dim)
    feature_dim: int
    preprocess: Preprocess


@dataclass(frozen=True)
class BackboneEntry:
    factory: Callable[..., Backbone]  # (pretrained) or, with uses_clip, (pretrained, clip: ClipSpec)
    has_pretrained: bool  # whether pretrained weights exist for it at all
    uses_clip: bool = False


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, has_pretrained: bool = True, uses_clip: bool = False):
    def wrap(factory: Callable[..., Backbone]):
        BACKBONES[name] = BackboneEntry(factory, has_pretrained, uses_clip)
        return factory

    return wrap


def create_backbone(name: str, pretrained: bool, weights: Path | None = None, clip=None) -> Backbone:
    """Backbone `name`; `weights` (a local checkpoint) replaces the built-in pretrained weights."""
    if name not in BACKBONES:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    entry = BACKBONES[name]
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"--pretrained-weights {weights}: no such file")
    pretrained = pretrained and entry.has_pretrained and weights is None
    if entry.uses_clip:
        backbone = entry.factory(pretrained, clip or ClipSpec())
    else:
        backbone = entry.factory(pretrained)
    if weights is not None:
        load_backbone_checkpoint(backbone.features, Path(weights))
    return backbone


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


def _unwrap_state_dict(obj) -> dict:
    """The tensors of a checkpoint: a bare state dict or one under the usual keys."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return _unwrap_state_dict(obj[key])
    if not isinstance(obj, dict):
        raise TypeError(f"a {type(obj).__name__}, not a state dict")
    return obj


def load_backbone_checkpoint(module: nn.Module, path: Path) -> None:
    """Load a local checkpoint into `module`, whichever usual prefix its keys carry.

    Keys of layers the backbone dropped (a classifier head) are ignored; a
    checkpoint that leaves any backbone weight unset is refused.
    """
    expected = "a PyTorch state dict (torch.save(model.state_dict()))"
    try:
        state = _unwrap_state_dict(load_torch(path, "--pretrained-weights", expected))
    except TypeError as err:
        raise UserError(f"--pretrained-weights {path} holds {err}; expected {expected}") from err
    own = module.state_dict()
    best: dict = {}
    for prefix in ("", "module.", "backbone.", "visual.", "model.", "feature_extractor."):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in own}
        if len(candidate) > len(best):
            best = candidate
    missing = sorted(set(own) - set(best))
    if missing:
        raise UserError(f"--pretrained-weights {path} does not fit this backbone: {len(missing)} of {len(own)} "
                        f"weights missing (first: {missing[0]}); pass a checkpoint of the same architecture")
    try:
        module.load_state_dict(best)
    except RuntimeError as err:  # shape mismatch
        raise UserError(f"--pretrained-weights {path} does not fit this backbone: {str(err).splitlines()[-1].strip()}") from err


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


@register_backbone("resnet101")
def _resnet101(pretrained: bool) -> Backbone:
    """PU-MLC's backbone (Yuan et al. 2024): torchvision's ImageNet V1 weights, as the authors' URL table."""
    return _torchvision_resnet("resnet101", tv.ResNet101_Weights, pretrained)


@register_backbone("resnet18")
def _resnet18(pretrained: bool) -> Backbone:
    return _torchvision_resnet("resnet18", tv.ResNet18_Weights, pretrained)


class SpatialMax(nn.Module):
    """Global max pooling, (B, C, H, W) -> (B, C), as `max` over the flattened H x W.

    Not `nn.AdaptiveMaxPool2d(1)`: its CUDA backward has no deterministic
    implementation, so `--deterministic` runs on a GPU would stop. Not `amax`
    either: on ties (flat regions of the digit mosaics give many) it shares the
    gradient among the tied positions and changes training. `max(dim)` returns
    the first maximal position, as the pooling did, and sends the whole gradient
    there: the same values and gradients, so results on the CPU are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).max(dim=2).values


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
        SpatialMax(),
    )
    return Backbone(net, 64, Preprocess(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


def _torchvision_convnext(size: str, pretrained: bool) -> Backbone:
    arch = f"convnext_{size}"
    net = getattr(tv, arch)(weights=None)
    if pretrained:
        net.load_state_dict(load_torchvision_weights(getattr(tv, f"ConvNeXt_{size.title()}_Weights").IMAGENET1K_V1))
    dim = net.classifier[2].in_features
    net.classifier[2] = nn.Identity()  # keep the head's LayerNorm: the pooled features are normalised by it
    return Backbone(net, dim, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD))


for _size in ("tiny", "small", "base", "large"):
    register_backbone(f"convnext_{_size}")(lambda pretrained, size=_size: _torchvision_convnext(size, pretrained))


def _timm_convnext_xlarge(tag: str, pretrained: bool) -> Backbone:
    """VLPL's ConvNeXt-XL (timm), ImageNet-22k or 22k->1k; weights from the Hugging Face cache."""
    import timm

    name = f"convnext_xlarge.{tag}"
    where = (f"place the Hugging Face repo timm/{name} (model.safetensors) in the hub cache "
             f"{os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}, "
             f"or pass --pretrained-weights PATH or --no-pretrained")
    if pretrained and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        # Check before building: the model has 350M parameters to initialise.
        if not any(isinstance(try_to_load_from_cache(f"timm/{name}", f), str)
                   for f in ("model.safetensors", "pytorch_model.bin")):
            raise UserError(f"{name} weights are not in the local cache and HF_HUB_OFFLINE=1: {where}")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0)  # num_classes=0: pooled features
    except Exception as err:  # not cached and offline, no network
        raise UserError(f"cannot load the {name} weights ({type(err).__name__}): {where}") from err
    return Backbone(net, net.num_features, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD))


register_backbone("convnext_xlarge_22k")(lambda pretrained: _timm_convnext_xlarge("fb_in22k", pretrained))
register_backbone("convnext_xlarge_1k")(lambda pretrained: _timm_convnext_xlarge("fb_in22k_ft_in1k", pretrained))


@register_backbone("clip_vision", uses_clip=True)
def _clip_vision(pretrained: bool, clip) -> Backbone:
    """The CLIP image tower (fine-tuned); features = its projected image embedding, as in VLPL."""
    spec = clip if pretrained else ClipSpec(clip.model)  # --no-pretrained: the architecture only
    if not pretrained and not spec.is_config_file:
        import open_clip

        model = open_clip.create_model(spec.name, pretrained=None)
    else:
        model = create_clip(spec)
    visual = model.visual
    return Backbone(visual, visual.output_dim, clip_preprocess(model))
