"""The parts of the model that `models.py` puts together, and their registries.

    backbones.py  each network: its feature map before global pooling, its own pooling, its preprocessing
    heads.py      the heads (`--head`): feature map -> logits
    lgconv.py     PU-MLC's local-global convolution (`--lgconv`)
    ssgrl.py      PU-MLC's SSGRL head (`--head ssgrl`)

`BACKBONES` and `HEADS` (below) are what the flags and the CLI's checks read: names, help lines
and what each part can take. Each entry names its builder (`lazy.Lazy`), imported when a model is
built, so that reading them imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lazy import Lazy

if TYPE_CHECKING:
    from torch import nn

    from nets.backbones import Backbone

BOOST_ALPHA = 5.0  # the BoostLU authors' factor of the positive CAM values


@dataclass(frozen=True)
class BackboneEntry:
    factory: Callable[..., Backbone]  # (pretrained) or, with uses_clip, (pretrained, clip: ClipSpec)
    has_pretrained: bool = True  # whether pretrained weights exist for it at all
    uses_clip: bool = False
    # the side of the feature map for a square input of this side (0: too small to run); None: no spatial map
    map_side: Callable[[int], int] | None = None


def stride_32_ceil(side: int) -> int:
    """A ResNet's map: five stride-2 steps, each padded, so each rounds up."""
    return -(-side // 32)


def stride_32_floor(side: int) -> int:
    """A ConvNeXt's map: a 4 x 4 stem of stride 4 and three 2 x 2 downsamplings, unpadded, so each rounds down."""
    return side // 32


def stride_4_floor(side: int) -> int:
    """The digits CNN's map: two 2 x 2 max poolings."""
    return side // 4


BACKBONES: dict[str, BackboneEntry] = {
    "digits_cnn": BackboneEntry(Lazy("nets.backbones:digits_cnn"), has_pretrained=False, map_side=stride_4_floor),
    # resnet101: PU-MLC's backbone (Yuan et al. 2024)
    **{arch: BackboneEntry(Lazy("nets.backbones:torchvision_resnet", arch), map_side=stride_32_ceil)
       for arch in ("resnet18", "resnet50", "resnet101")},
    **{f"convnext_{size}": BackboneEntry(Lazy("nets.backbones:torchvision_convnext", size), map_side=stride_32_floor)
       for size in ("tiny", "small", "base", "large")},
    "convnext_xlarge_22k": BackboneEntry(Lazy("nets.backbones:timm_convnext_xlarge", "fb_in22k"),
                                         map_side=stride_32_floor),
    "convnext_xlarge_1k": BackboneEntry(Lazy("nets.backbones:timm_convnext_xlarge", "fb_in22k_ft_in1k"),
                                        map_side=stride_32_floor),
    "clip_vision": BackboneEntry(Lazy("nets.backbones:clip_vision"), uses_clip=True),
}


@dataclass(frozen=True)
class HeadEntry:
    build: Callable[..., nn.Module]  # (feature_dim, num_classes, **its options) -> the head
    help: str
    reads_map: bool = True  # False: it reads the backbone's pooled features
    min_map_side: int = 1  # the smallest feature map it can read, side in positions
    cams: bool = False  # it has class activation maps (`.cams(feature_map)`), which scripts/show_cams.py draws


HEADS: dict[str, HeadEntry] = {
    "linear": HeadEntry(Lazy("torch.nn:Linear"), "the backbone's own global pooling, then one linear layer",
                        reads_map=False),
    "cam": HeadEntry(Lazy("nets.heads:CamHead"),
                     "class activation maps (a 1x1 conv with bias on the feature map), averaged over the map",
                     cams=True),
    "boostlu": HeadEntry(Lazy("nets.heads:BoostLUHead"),
                         "BoostLU (Kim et al., CVPR 2023): the class activation maps with their positive values "
                         "multiplied by --boost-alpha, then averaged", cams=True),
    "ssgrl": HeadEntry(Lazy("nets.heads:ssgrl_head"),
                       "PU-MLC's head: semantic decoupling guided by --word-vectors and a gated GNN over the "
                       "co-occurrence graph of the observed train labels", min_map_side=2),
}
