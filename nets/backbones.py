"""The backbones: each network with its feature map, its own global pooling and its preprocessing.

Each factory (registered in `nets/__init__.py`) returns a `Backbone`: the network (whose forward gives the
pooled (B, D) features, as the linear modes cache them), how to read its feature map
before global pooling (B, D, H, W) and how it pools that map itself, its feature size,
and its own preprocessing (input size, mean, std), so a backbone always sees the
normalisation it was trained with. A head (nets/heads.py) turns the map into logits.

    ResNets        the layer4 map (stride 32); pooling: the spatial mean
    ConvNeXt       the last stage's map (stride 32); pooling: the spatial mean, then the LayerNorm
                   of torchvision's (timm's) classifier, which only the linear head uses
    digits_cnn     the last conv block's map (stride 4); pooling: the spatial max
    clip_vision    no spatial map: its pooled, projected image embedding (VLPL's feature), as a
                   1 x 1 map. Its patch tokens are another space (the transformer's width, before
                   the attention pooling and the projection), so a CAM on them would not be the
                   linear head's classifier read per position

    def name(pretrained: bool) -> Backbone: ...   # registered in nets/__init__.py: BACKBONES
    def family(variant: str): ...                 # or a family: family(variant)(pretrained)

The maps are read with the network's own modules, so the weights, their state-dict keys
and the pooled features are those of the network as torchvision (timm, open_clip) builds it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from errors import UserError
from methods.vlpl.towers import ClipSpec, clip_preprocess, create_clip
from preprocess import Preprocess

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Reader = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (network, tensor) -> tensor


@dataclass
class Backbone:
    features: nn.Module  # the network: images -> (B, feature_dim) pooled features
    feature_dim: int  # channels of the map, size of the pooled features
    preprocess: Preprocess
    feature_map: Reader  # (network, images) -> (B, feature_dim, H, W), before global pooling
    pool: Reader  # (network, map) -> (B, feature_dim): the network's own global pooling
    pool_only: tuple[str, ...] = ()  # the network's children with weights that only `pool` uses


def load_torchvision_weights(weights) -> dict:
    """State dict of a torchvision weights enum entry, from torch's hub cache ($TORCH_HOME): read there if it is
    there, else fetched into it, never with HF_HUB_OFFLINE=1. A failed fetch leaves no folder behind."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    where = f"put {cache.name} (from {weights.url}) in {cache.parent}/, or pass --no-pretrained"
    if not cache.is_file():
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(f"pretrained weights not in the local cache and HF_HUB_OFFLINE=1: {where}")
        log.info(f"{cache.name} is not in {cache.parent}: fetching it from {weights.url} (offline: {where})")
        made = [folder for folder in (cache.parent.parent, cache.parent) if not folder.exists()]
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cache), progress=False)
        except Exception as err:  # no network, proxy refusal, truncated download...
            for folder in reversed(made):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise UserError(f"cannot fetch pretrained weights ({type(err).__name__}): {where}") from err
    try:
        return weights.get_state_dict(progress=False)  # from the cache: no network
    except Exception as err:  # a damaged file
        raise UserError(f"cannot load pretrained weights from {cache} ({type(err).__name__}): {where}") from err


def _resnet_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _resnet_pool(net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return torch.flatten(net.avgpool(fmap), 1)  # as torchvision's forward (its fc is removed)


def torchvision_resnet(arch: str):
    """The factory of torchvision's ResNet `arch` (resnet18, resnet50, resnet101)."""
    return lambda pretrained: _torchvision_resnet(arch, pretrained)


def _torchvision_resnet(arch: str, pretrained: bool) -> Backbone:
    from torchvision import models as tv  # here, not at import: `import torchvision` costs seconds (torch._dynamo)
    net = getattr(tv, arch)(weights=None)
    if pretrained:
        # IMAGENET1K_V1 is what `pretrained=True` loaded in the reference code (and PU-MLC's URL table, resnet101).
        net.load_state_dict(load_torchvision_weights(getattr(tv, f"ResNet{arch[6:]}_Weights").IMAGENET1K_V1))
    dim = net.fc.in_features
    net.fc = nn.Identity()  # the torchvision forward ends with global average pooling + flatten
    return Backbone(net, dim, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD), _resnet_map, _resnet_pool)


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


def _digits_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    for layer in list(net)[:-1]:  # every layer but the closing SpatialMax
        images = layer(images)
    return images


def _digits_pool(net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return net[-1](fmap)


def digits_cnn(pretrained: bool) -> Backbone:
    """A small CNN for the 24x24 digit mosaics: fast on a CPU, trained from scratch.

    Max pooling (not average) at the end: a digit in one cell of the 3x3 grid
    must light up its class wherever it sits. Its map is 6 x 6 at 24 px.
    """
    net = nn.Sequential(
        _conv_block(3, 16), _conv_block(16, 16), nn.MaxPool2d(2),  # 24 -> 12
        _conv_block(16, 32), _conv_block(32, 32), nn.MaxPool2d(2),  # 12 -> 6
        _conv_block(32, 64),
        SpatialMax(),
    )
    return Backbone(net, 64, Preprocess(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), _digits_map, _digits_pool)


def _convnext_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net.features(images)


def _convnext_pool(net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return net.classifier(net.avgpool(fmap))  # LayerNorm2d, flatten (its final Linear is removed)


def torchvision_convnext(size: str):
    """The factory of torchvision's ConvNeXt of `size` (tiny, small, base, large)."""
    return lambda pretrained: _torchvision_convnext(size, pretrained)


def _torchvision_convnext(size: str, pretrained: bool) -> Backbone:
    from torchvision import models as tv  # as in _torchvision_resnet
    arch = f"convnext_{size}"
    net = getattr(tv, arch)(weights=None)
    if pretrained:
        net.load_state_dict(load_torchvision_weights(getattr(tv, f"ConvNeXt_{size.title()}_Weights").IMAGENET1K_V1))
    dim = net.classifier[2].in_features
    net.classifier[2] = nn.Identity()  # keep the head's LayerNorm: the pooled features are normalised by it
    return Backbone(net, dim, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD), _convnext_map, _convnext_pool,
                    pool_only=("classifier",))


def _timm_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net.forward_features(images)


def _timm_pool(net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return net.forward_head(fmap)  # pooling and the head's LayerNorm (num_classes=0: no classifier)


def timm_convnext_xlarge(tag: str):
    """The factory of timm's ConvNeXt-XL with the weights `tag` (fb_in22k, fb_in22k_ft_in1k)."""
    return lambda pretrained: _timm_convnext_xlarge(tag, pretrained)


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
    return Backbone(net, net.num_features, Preprocess(448, IMAGENET_MEAN, IMAGENET_STD), _timm_map, _timm_pool,
                    pool_only=("head",))


def _embedding_as_map(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(images)[:, :, None, None]


def _flatten(net: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return fmap.flatten(1)


def clip_vision(pretrained: bool, clip) -> Backbone:
    """The CLIP image tower (fine-tuned); features = its projected image embedding, as in VLPL."""
    spec = clip if pretrained else ClipSpec(clip.model)  # --no-pretrained: the architecture only
    if not pretrained and not spec.is_config_file:
        import open_clip

        model = open_clip.create_model(spec.name, pretrained=None)
    else:
        model = create_clip(spec)
    visual = model.visual
    return Backbone(visual, visual.output_dim, clip_preprocess(model), _embedding_as_map, _flatten)
