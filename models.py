"""The model spml trains: a backbone's feature map turned into one logit per class by a head.

The face the rest of spml imports; the parts live in the `nets` package:

    nets/__init__.py    the registries of backbones and heads (`-m`, `--head`)
    nets/backbones.py   each network, its feature map before global pooling, its own pooling and
                        its preprocessing
    nets/heads.py       the heads: linear (default), cam, boostlu, ssgrl
    nets/lgconv.py      PU-MLC's local-global convolution (`--lgconv`)
    nets/ssgrl.py       PU-MLC's SSGRL head (`--head ssgrl`)

`create_model` builds a run's model from its `Config`; `create_backbone` one backbone
(`--pretrained-weights PATH` loads a local checkpoint into it instead of the built-in
weights: `load_backbone_checkpoint`; `clip_vision` also takes the CLIP model spec).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import Config
from errors import UserError
from fileio import load_torch
from methods.vlpl.towers import ClipSpec
from nets import BACKBONES, BOOST_ALPHA, HEADS  # noqa: F401 (the face)
from nets.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone  # noqa: F401 (the face)
from nets.lgconv import convert_to_lgconv
from nets.ssgrl import cooccurrence_graph, load_word_vectors

log = logging.getLogger(__name__)


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
    """A backbone's feature map, turned into one logit per class by a head (nets/heads.py).

    `forward_features` gives the map before global pooling, `forward_head` the logits from it
    (the `linear` head pools it the backbone's own way first). State-dict keys: `backbone.*`,
    the network's own, and `classifier.*`, the head's.
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "linear", **head_options):
        super().__init__()
        entry = HEADS[head]
        self.backbone = backbone.features
        self.classifier = entry.build(backbone.feature_dim, num_classes, **head_options)
        self.preprocess = backbone.preprocess
        self._feature_map = backbone.feature_map
        self._pool = None if entry.reads_map else backbone.pool
        if entry.reads_map:  # weights only the pooling uses (ConvNeXt's LayerNorm) would never train
            for name in backbone.pool_only:
                setattr(self.backbone, name, nn.Identity())

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._feature_map(self.backbone, images)

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(feature_map if self._pool is None else self._pool(self.backbone, feature_map))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def create_model(cfg: Config, num_classes: int, train_labels: np.ndarray, saved: dict | None = None) -> MultiLabelModel:
    """The run's model: its backbone (--lgconv, --crop-size / --scale-size) and its head.

    `train_labels` are the observed ones (SSGRL's co-occurrence graph); `saved` the weights the
    model will be given (a checkpoint's), whose SSGRL word vectors are used instead of reading
    the --word-vectors file again.
    """
    backbone = create_backbone(cfg.model, cfg.pretrained, cfg.pretrained_weights,
                               ClipSpec(cfg.clip_model, cfg.clip_weights))
    if cfg.lgconv:  # after the pretrained weights, as the authors: the global branches start near zero
        log.info(f"--lgconv: {convert_to_lgconv(backbone.features)} convs of {cfg.model} get a global branch")
    if cfg.crop_size is not None or cfg.scale_size is not None:
        backbone.preprocess = dataclasses.replace(backbone.preprocess, size=cfg.crop_size or backbone.preprocess.size,
                                                  scale=cfg.scale_size)
    options: dict = {}
    if cfg.head == "boostlu":
        options = {"alpha": cfg.boost_alpha}
    elif cfg.head == "ssgrl":  # the graph comes from the observed train labels, as the authors'
        kept = (saved or {}).get("classifier.word_vectors")
        vectors = kept.numpy() if kept is not None else load_word_vectors(cfg.word_vectors, num_classes)
        options = {"word_vectors": vectors, "graph": cooccurrence_graph(train_labels)}
    return MultiLabelModel(backbone, num_classes, cfg.head, **options)


def load_weights(model: nn.Module, weights: dict, source: Path) -> None:
    """A checkpoint's weights into the model its config describes; weights of another layout are refused in one line."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = str(err).splitlines()[0].rstrip(":.")
        raise UserError(f"{source} holds weights that do not fit the model its config describes ({reason}): "
                        f"it was written by another version of spml") from err


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
