"""Train a single-positive multi-label classifier and report its mAP.

    python main.py -d coco -l EM_APL -g 0 -s 1
    python main.py              # the embedded digits dataset, prepared on first use

Wires the pieces: config -> data -> backbone -> loss -> loop (engine.fit); the linear
training modes live in modes.py, the hyperparameter grid in search.py.
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from config import Config, parse_args
from datasets import DatasetSplits, ImageDataset, load_splits
from errors import UserError
from losses import LOSSES, SPMLLoss, create_loss
from models import MultiLabelModel, create_backbone
from modes import run_linear_mode, train_and_record
from search import run_search

log = logging.getLogger("spml")


def prepare_digits(cfg: Config) -> None:
    """The embedded dataset is built on first use, so a fresh clone runs with no setup."""
    from preproc.format_digits import format_digits
    from preproc.generate_observed_labels import generate_observed_labels

    if not (cfg.data_dir / "formatted_val_labels.npy").is_file():
        log.info(f"digits: building the dataset in {cfg.data_dir} (first use, a few seconds)")
        format_digits(cfg.data_dir)
    if not (cfg.data_dir / "formatted_val_labels_obs.npy").is_file():
        log.info("digits: sampling the observed single-positive labels (seed 1200)")
        generate_observed_labels(cfg.data_dir)


def make_loaders(cfg: Config, splits: DatasetSplits, model: MultiLabelModel) -> dict[str, DataLoader]:
    from presets import PRESETS

    train_tf = model.preprocess.transform(train=True, hflip=PRESETS[cfg.dataset].hflip)
    eval_tf = model.preprocess.transform(train=False, hflip=False)
    common = dict(batch_size=cfg.bsize, num_workers=cfg.num_workers, pin_memory=cfg.device != "cpu",
                  persistent_workers=cfg.num_workers > 0)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    return {
        "train": DataLoader(ImageDataset(splits.train, train_tf), shuffle=True, generator=shuffle_gen, **common),
        # the train images in order, without augmentation: for pseudo-labelling passes
        "train_eval": DataLoader(ImageDataset(splits.train, eval_tf), shuffle=False, **common),
        # never drop the last partial batch at evaluation (a trap of the references)
        "val": DataLoader(ImageDataset(splits.val, eval_tf), shuffle=False, **common),
        "test": DataLoader(ImageDataset(splits.test, eval_tf), shuffle=False, **common),
    }


def run(cfg: Config) -> dict:
    """One run, or with --search one run per grid point (search.py)."""
    if cfg.search:
        return run_search(cfg, run_once)
    return run_once(cfg)


def run_once(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.dataset == "digits":
        prepare_digits(cfg)
    if cfg.train_mode != "end_to_end":
        return run_linear_mode(cfg, train_end_to_end)
    return train_end_to_end(cfg, cfg.out)


def train_end_to_end(cfg: Config, out: Path, init: Callable[[MultiLabelModel, SPMLLoss], None] | None = None) -> dict:
    """Backbone + classifier on images; `init` may load weights and loss state first (linear_init)."""
    label_view = LOSSES[cfg.loss].label_view
    splits = load_splits(cfg.data_dir, cfg.dataset, cfg.image_root, label_view, cfg.val_set_variant)
    device = torch.device(cfg.device)
    model = MultiLabelModel(create_backbone(cfg.model, cfg.pretrained), splits.num_classes).to(device)
    loss_fn = create_loss(cfg.loss, cfg.hyper, len(splits.train.images), splits.num_classes).to(device)
    loss_fn.attach_train_labels(torch.from_numpy(splits.train.labels))
    if init is not None:
        init(model, loss_fn)
    loaders = make_loaders(cfg, splits, model)
    return train_and_record(cfg, out, model, loss_fn, loaders, cfg.epochs).summary()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    try:
        run(parse_args(argv))
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
