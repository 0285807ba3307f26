"""Building open_clip models offline: by name (weights from a file or open_clip's cache) or from a JSON config.

`--clip-model` is either an open_clip model name (the paper's `ViT-L-14-336`,
OpenAI weights) or the path of a JSON model config in open_clip's format (for a
small model, e.g. in tests). Weights come from `--clip-weights PATH` (an open_clip
checkpoint), else from open_clip's own cache (Hugging Face hub cache) for the
name's OpenAI tag. A JSON config without weights builds a randomly initialised
model from a fixed seed (deterministic, so its scores can be cached), with a warning.

open_clip is imported lazily: it costs seconds and only the VLPL paths need it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from errors import UserError
from preprocess import Preprocess
from presets import DEFAULT_CLIP_MODEL

log = logging.getLogger(__name__)

CLIP_TAG = "openai"
RANDOM_INIT_SEED = 0  # a weightless JSON-config model is always the same model


@dataclass(frozen=True)
class ClipSpec:
    model: str = DEFAULT_CLIP_MODEL  # open_clip name or path to a JSON config
    weights: Path | None = None  # local open_clip checkpoint

    @property
    def is_config_file(self) -> bool:
        return self.model.endswith(".json")

    @property
    def name(self) -> str:
        return Path(self.model).stem if self.is_config_file else self.model

    def identity(self) -> str:
        """A string that changes whenever the model's weights would: for cache keys."""
        parts = [self.name]
        if self.is_config_file:
            parts.append(hashlib.sha256(Path(self.model).read_bytes()).hexdigest()[:16])
        if self.weights is not None:
            stat = self.weights.stat()
            parts.append(f"{self.weights.resolve()}:{stat.st_size}:{int(stat.st_mtime)}")
        elif self.is_config_file:
            parts.append(f"random-init-seed{RANDOM_INIT_SEED}")
        else:
            parts.append(CLIP_TAG)
        return "|".join(parts)


def _open_clip():
    import open_clip

    return open_clip


@contextlib.contextmanager
def _quiet():
    """open_clip logs each build step (and its failures, which we re-raise as one line) on the root logger."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _check(spec: ClipSpec) -> None:
    open_clip = _open_clip()
    if spec.is_config_file:
        if not Path(spec.model).is_file():
            raise UserError(f"--clip-model {spec.model}: no such JSON config file")
        open_clip.add_model_config(spec.model)  # registers it under the file's stem
    elif spec.model not in open_clip.list_models():
        raise UserError(f"--clip-model {spec.model!r} is neither an open_clip model name nor a .json config; "
                        f"e.g. {DEFAULT_CLIP_MODEL}, ViT-B-32, ViT-L-14")
    if spec.weights is not None and not spec.weights.is_file():
        raise UserError(f"--clip-weights {spec.weights}: no such file")


def image_side(spec: ClipSpec) -> int:
    """The side of the images its tower takes: a ViT's positional embeddings fix it."""
    with _quiet():
        _check(spec)  # registers a JSON config with open_clip
        size = _open_clip().get_model_config(spec.name)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _cached_weights(name: str) -> Path:
    """The local file of `name`'s OpenAI weights in the Hugging Face cache; an error at once when it is not there.

    Never a download attempt: on a machine without network it waits close to a minute
    in silence before failing, and a run should not depend on one.
    """
    cfg = _open_clip().get_pretrained_cfg(name, CLIP_TAG)
    if not cfg:
        raise UserError(f"--clip-model {name} has no {CLIP_TAG} weights in open_clip; pass --clip-weights PATH")
    repo = cfg.get("hf_hub", "").rstrip("/")
    if not repo:
        raise UserError(f"{name} ({CLIP_TAG}) weights are only on {cfg.get('url', 'a URL')}: download the file and "
                        f"pass --clip-weights PATH")
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return Path(hit)
    cache = os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")
    raise UserError(f"CLIP weights for {name} ({CLIP_TAG}) are not in the local Hugging Face cache {cache}: download "
                    f"them once with `huggingface-cli download {repo} open_clip_model.safetensors`, or pass "
                    f"--clip-weights PATH (an open_clip checkpoint of {name})")


def create_clip(spec: ClipSpec) -> nn.Module:
    """The full open_clip model (both towers) in eval mode, with weights per `spec`."""
    with _quiet():
        model = _create_clip(spec)
    if spec.is_config_file and spec.weights is None:
        log.warning(f"CLIP model {spec.model} has no weights (--clip-weights): randomly initialised "
                    f"(seed {RANDOM_INIT_SEED}); its pseudo-labels are meaningless outside tests")
    return model


def _create_clip(spec: ClipSpec) -> nn.Module:
    _check(spec)
    open_clip = _open_clip()
    if spec.is_config_file and spec.weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(spec.name, pretrained=None)
        return model.eval()
    weights = spec.weights or _cached_weights(spec.name)
    # OpenAI's weights were trained with QuickGELU; open_clip only infers it from the tag, not from a file.
    quick_gelu = bool((open_clip.get_pretrained_cfg(spec.name, CLIP_TAG) or {}).get("quick_gelu"))
    try:
        model = open_clip.create_model(spec.name, pretrained=str(weights), force_quick_gelu=quick_gelu)
    except Exception as err:  # wrong architecture, truncated file...
        source = f"--clip-weights {weights}" if spec.weights else f"the cached file {weights}"
        raise UserError(f"{source} does not load into {spec.name} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]})") from err
    return model.eval()


def clip_preprocess(model: nn.Module) -> Preprocess:
    """CLIP's own input size and normalisation (never ImageNet's: a trap of the reference)."""
    cfg = _open_clip().get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocess(int(size), tuple(cfg["mean"]), tuple(cfg["std"]))


def tokenizer(spec: ClipSpec):
    with _quiet():
        _check(spec)
        return _open_clip().get_tokenizer(spec.name)
