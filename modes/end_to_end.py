"""End-to-end training (backbone + classifier on images), and --eval-only of its checkpoints."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch

from config import Config
from dataset_provenance import dataset_variant
from datasets import DatasetSplits, load_splits
from fileio import write_json_atomic
from instrumentation import SkippedImages
from losses import LOSSES
from methods.base import SPMLLoss
from models import MultiLabelModel, create_model, load_weights
from modes.setup import build_loss, image_views, make_loaders
from preproc.generate_observed_labels import label_protocol
from training.checkpoint import LAST, load_checkpoint
from training.distributed import is_main
from training.engine import evaluate
from training.speed import StepOptions, prepare_model
from training.trainer import train_and_record

log = logging.getLogger(__name__)

Init = Callable[[MultiLabelModel, SPMLLoss], None]  # loads weights and loss state before training (linear_init)


def _splits_and_model(cfg: Config, saved: dict | None = None) -> tuple[DatasetSplits, MultiLabelModel]:
    """The run's splits and model; `saved`: the weights the model will be given (models.create_model)."""
    splits = load_splits(cfg.data_dir, cfg.dataset, cfg.image_root, LOSSES[cfg.loss].label_view, cfg.val_set_variant)
    model = create_model(cfg, splits.num_classes, splits.train.labels, saved)
    return splits, model.to(torch.device(cfg.device))


def _without_pretrained(cfg: Config) -> Config:
    """The model of a run whose every weight a checkpoint gives: no pretrained file to read (or miss, offline)."""
    return dataclasses.replace(cfg, pretrained=False, pretrained_weights=None)


def train_end_to_end(cfg: Config, out: Path, init: Init | None = None) -> dict:
    """Train into the run folder `out`; returns the summary (best epoch, its val and test mAP)."""
    resumed = cfg.resume and (out / LAST).is_file()
    # a resumed SSGRL head takes its word vectors from last.pt, as --eval-only from its checkpoint
    saved = load_checkpoint(out / LAST)["model"] if resumed and cfg.head == "ssgrl" else None
    splits, model = _splits_and_model(_without_pretrained(cfg) if resumed else cfg, saved)
    device = torch.device(cfg.device)
    loss_fn = build_loss(cfg, splits.train, splits.num_classes, device, cfg.epochs, image_views(cfg))
    if init is not None:
        init(model, loss_fn)
    loaders = make_loaders(cfg, splits, model, flip_views=loss_fn.needs_clip_scores, crop_flips=loss_fn.crop_flips)
    info = {
        "image_size": model.preprocess.size,
        # NUS-WIDE's and COCO's variants give different numbers: every result names the one it used
        "dataset_variant": dataset_variant(cfg.dataset, cfg.data_dir, len(splits.train.images) + len(splits.val.images),
                                           len(splits.test.images)),
        # single-positive or PU-MLC's known-ratio labels: results of the two must never be mixed
        "label_protocol": label_protocol(cfg.data_dir),
    }
    return train_and_record(cfg, out, model, loss_fn, loaders, cfg.epochs, info).summary()


def evaluate_checkpoint(cfg: Config) -> dict:
    """--eval-only: val and test metrics of a checkpoint's weights, written beside it."""
    ckpt = load_checkpoint(cfg.eval_only)
    splits, model = _splits_and_model(_without_pretrained(cfg), ckpt["model"])
    load_weights(model, ckpt["model"], cfg.eval_only)
    loaders = make_loaders(cfg, splits, model)
    device = torch.device(cfg.device)
    options = StepOptions.from_config(cfg)
    prepare_model(model, options)
    skipped = SkippedImages()  # --skip-bad-images: each unreadable image named once
    scores = {split: evaluate(model, loaders[split], device, cfg.threshold, split, options, skipped)
              for split in ("val", "test")}
    out = cfg.eval_only.parent / f"eval_{cfg.eval_only.stem}.json"
    if is_main():
        write_json_atomic(out, {"checkpoint": str(cfg.eval_only), "epoch": ckpt["train_state"]["epoch"],
                                "config": cfg.to_dict(), **scores})
    log.info(f"{cfg.eval_only} (epoch {ckpt['train_state']['epoch']}): val mAP {scores['val']['map']:.2f}, "
             f"test mAP {scores['test']['map']:.2f} -> {out}")
    return scores
