"""Frozen-CLIP similarities of every training image to every class, computed once and cached on disk.

The reference (VLPL) runs the frozen CLIP image tower on every batch of every
epoch, on ImageNet-normalised pixels. CLIP is frozen, so its output for an image
never changes: here each training image is scored once (and its mirror image
too when the train transform flips), with CLIP's own size and normalisation,
and the result is kept in

    <data-dir>/clip_scores/<dataset>_<clip model>_<key>.npy    (V*N, C) float32 cosines
    <data-dir>/clip_scores/<dataset>_<clip model>_<key>.json   what the key was made of

Row v*N + i is the view v (0: as stored, 1: mirrored) of training image i. The
key hashes the dataset, the CLIP model (name/config, weights file), the text side
(class prompts, or the bytes of `--text-features`), the image list and the views,
so any change recomputes and a later run with the same inputs reuses the file
without even loading CLIP. Temperature, threshold and partial act on these
cosines later (`loss.pseudo_labels`), so changing them reuses the cache too.

AEVLP's DAMP scores K crops of each image (methods/aevlp/damp.py: the whole image
and the tiles of a grid, normalised as it asks) against text embeddings perturbed
by its text graph (methods/aevlp/text_graph.py): row (v K + k) N + i is crop k of
image i in orientation v, stored as float16 (the authors' CLIP computes in fp16),
and the grid, the normalisation and the text graph are part of the key.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import ImageDataset, Split
from errors import UserError
from fileio import load_npy, save_npy_atomic, write_json_atomic
from methods.aevlp.damp import CropGrid
from methods.aevlp.text_graph import TextGraph
from methods.vlpl.towers import ClipSpec, clip_preprocess, create_clip, tokenizer
from presets import DEFAULT_PROMPT

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the scoring itself changes
CROPS_PER_FORWARD = 256  # DAMP: images per scoring batch x crops per image


def load_text_features(path: Path, num_classes: int) -> np.ndarray:
    """A (C, D) float array of class text embeddings (VLPL's shipped `*text_feature.npy` format), L2-normalised."""
    feats = load_npy(path, "pass a (num_classes, embed_dim) .npy array of CLIP text embeddings")
    if feats.ndim != 2 or feats.shape[0] != num_classes or feats.dtype.kind != "f":
        raise UserError(f"--text-features {path} holds a {feats.dtype} array of shape {feats.shape}; "
                        f"expected floats of shape ({num_classes}, embed_dim), one row per class")
    if not np.isfinite(feats).all():
        raise UserError(f"--text-features {path} holds NaN or infinite values")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if (norms == 0).any():
        raise UserError(f"--text-features {path} has an all-zero row (class {int(np.argmin(norms))})")
    if not np.allclose(norms, 1.0, atol=1e-3):
        log.warning(f"--text-features {path}: rows are not unit-length; normalising them (cosine similarity)")
    return (feats / norms).astype(np.float32)


@torch.no_grad()
def encode_prompts(model: torch.nn.Module, spec: ClipSpec, prompts: list[str], device: torch.device) -> torch.Tensor:
    """(C, D) text embeddings of `prompts` from the CLIP text tower, not normalised."""
    tokens = tokenizer(spec)(prompts).to(device)
    return model.encode_text(tokens).float()


@torch.no_grad()
def score_images(model: torch.nn.Module, paths: np.ndarray, text: torch.Tensor, views: int, device: torch.device,
                 batch_size: int = 32, num_workers: int = 0, skip_unreadable: bool = False,
                 crops: CropGrid | None = None, dtype: type = np.float32) -> np.ndarray:
    """(views*K*N, C) cosines between CLIP image embeddings of the K crops of each image (the whole image
    alone without `crops`) and `text`; row (v K + k) N + i is crop k of image i in view v (1: mirrored).
    With `skip_unreadable` an unreadable image's rows are NaN (it is left out of training too)."""
    # A square resize (not CLIP's crop), so CLIP sees the whole image the trained backbone sees.
    preprocess = clip_preprocess(model)
    transform = preprocess.transform(train=False, hflip=False) if crops is None else crops.transform(preprocess)
    count = 1 if crops is None else crops.count
    labels = np.zeros((len(paths), 1), dtype=np.float32)  # ImageDataset yields labels; unused here
    dataset = ImageDataset(Split(paths, labels), transform, skip_unreadable=skip_unreadable)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=dataset.collate)
    text = text.to(device)
    out = np.full((views * count * len(paths), len(text)), np.nan, dtype=dtype)
    crop = torch.arange(count)
    for images, _, index in tqdm(loader, desc="CLIP scores of the train set", disable=None):
        images = images.to(device).flatten(0, -4)  # (B x K, 3, s, s) with crops
        for view in range(views):
            # Mirroring the resized tensor equals resizing the mirrored image: the resize grid is symmetric.
            batch = images.flip(-1) if view else images
            emb = torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)
            rows = ((view * count + crop).unsqueeze(0) * len(paths) + index.unsqueeze(1)).flatten()
            out[rows.numpy()] = (emb @ text.T).cpu().numpy()
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def train_similarities(dataset: str, data_dir: Path, image_paths: np.ndarray, class_names: list[str], spec: ClipSpec,
                       views: int, device: torch.device, text_features: Path | None = None,
                       prompt: str = DEFAULT_PROMPT, num_workers: int = 0, skip_unreadable: bool = False,
                       crops: CropGrid | None = None, text_graph: TextGraph | None = None,
                       dtype: type = np.float32) -> np.ndarray:
    """(views*K*N, C) CLIP cosines of the training images (K crops each with `crops`, else 1), from the
    cache or computed once and cached; `text_graph` perturbs the text embeddings first. With
    `skip_unreadable` an unreadable image's rows are NaN, and the scores are not cached (a repaired image is
    scored next time)."""
    if text_features is not None:
        text_np = load_text_features(text_features, len(class_names))
        text_key = {"text_features": _sha(text_np.tobytes())}
    else:
        if "{}" not in prompt:
            raise UserError(f"--prompt-template {prompt!r} must contain {{}} where the class name goes")
        prompts = [prompt.format(name) for name in class_names]
        text_key = {"prompts": prompts}
    # only what differs from VLPL's whole-image float32 scores enters the key: VLPL's cached files stay valid
    damp_key = {**({"crops": {"grid": crops.grid, "norm": crops.norm}} if crops is not None else {}),
                **({"text_graph": text_graph.key()} if text_graph is not None else {}),
                **({"dtype": np.dtype(dtype).name} if np.dtype(dtype) != np.float32 else {})}
    key_fields = {"version": CACHE_VERSION, "dataset": dataset, "clip": spec.identity(), **text_key, "views": views,
                  "images": _sha("\n".join(map(str, image_paths)).encode()), "num_images": len(image_paths),
                  **damp_key}
    key = _sha(json.dumps(key_fields, sort_keys=True).encode())[:16]
    cache = data_dir / "clip_scores" / f"{dataset}_{spec.name}_{key}.npy"
    count = 1 if crops is None else crops.count
    shape = (views * count * len(image_paths), len(class_names))
    if cache.is_file():
        scores = load_npy(cache, "")
        if scores.shape == shape:
            log.info(f"CLIP scores: reusing {cache}")
            return scores
        log.warning(f"CLIP scores: {cache} has shape {scores.shape}, expected {shape}; recomputing it")

    if crops is not None:
        crops.check_sizes(image_paths)
    model = create_clip(spec).to(device)
    log.info(f"CLIP scores: scoring {len(image_paths)} training images x {count} crop(s) x {views} view(s) with "
             f"{spec.name} (once; cached in {cache})")
    if text_features is not None:
        text = torch.from_numpy(text_np)
        dim = model.visual.output_dim
        if text.shape[1] != dim:
            raise UserError(f"--text-features {text_features} has {text.shape[1]}-d rows but {spec.name} "
                            f"embeds images in {dim}-d; use text features of the same CLIP model")
    else:
        text = encode_prompts(model, spec, prompts, device)
    if text_graph is not None:  # on the raw embeddings, as the authors'
        text = text_graph(text)
    if text_features is None or text_graph is not None:  # --text-features rows are unit-length already
        text = torch.nn.functional.normalize(text, dim=-1)
    batch_size = 32 if crops is None else max(1, CROPS_PER_FORWARD // count)
    scores = score_images(model, image_paths, text, views, device, batch_size, num_workers, skip_unreadable, crops,
                          dtype)
    del model
    if (unreadable := int(np.isnan(scores).all(axis=1).sum()) // (views * count)):  # training names them
        log.warning(f"CLIP scores: {unreadable} unreadable image(s) left out (--skip-bad-images); not cached")
        return scores
    save_npy_atomic(cache, scores)
    write_json_atomic(cache.with_suffix(".json"), key_fields)
    return scores
