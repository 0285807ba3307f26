"""Train a single-positive multi-label classifier and report its mAP.

    python main.py -d coco -l EM_APL -g 0 -s 1
    python main.py              # the embedded digits dataset, prepared on first use

Wires the pieces: config -> data -> backbone -> loss -> one training phase
(trainer.train_and_record); the linear training modes live in modes.py, the
hyperparameter grid in search.py.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from checkpoint import load_checkpoint, seed_all
from clip_models import ClipSpec
from config import Config, parse_args
from dataset_provenance import dataset_variant
from datasets import DatasetSplits, ImageDataset, collate_skipping, load_splits
from engine import evaluate
from errors import UserError
from instrumentation import write_json_atomic
from losses import LOSSES, SPMLLoss, create_loss
from models import MultiLabelModel, create_backbone
from modes import run_linear_mode
from presets import PRESETS
from search import run_search
from trainer import restart_if_unstarted, train_and_record
from vlpl import VLPLLoss, attach_clip_pseudo_labels

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


def make_loaders(cfg: Config, splits: DatasetSplits, model: MultiLabelModel,
                 flip_views: bool = False) -> dict[str, DataLoader]:
    """`flip_views`: the train set flips images itself and reports it in the index (see ImageDataset)."""
    hflip = PRESETS[cfg.dataset].hflip
    train_tf = model.preprocess.transform(train=True, hflip=hflip and not flip_views)
    eval_tf = model.preprocess.transform(train=False, hflip=False)
    common = dict(batch_size=cfg.bsize, num_workers=cfg.num_workers, pin_memory=cfg.device != "cpu",
                  persistent_workers=cfg.num_workers > 0)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    train_set = ImageDataset(splits.train, train_tf, skip_unreadable=cfg.skip_bad_images, flip_views=flip_views and hflip)
    # Fresh train workers each epoch, seeded from shuffle_gen: with the generator's
    # state in last.pt, a resumed epoch sees the same order and augmentations.
    train_common = {**common, "persistent_workers": False}
    return {
        "train": DataLoader(train_set, shuffle=True, generator=shuffle_gen, collate_fn=collate_skipping, **train_common),
        # the train images in order, without augmentation: for pseudo-labelling passes
        "train_eval": DataLoader(ImageDataset(splits.train, eval_tf), shuffle=False, **common),
        # never drop the last partial batch at evaluation (a trap of the references)
        "val": DataLoader(ImageDataset(splits.val, eval_tf), shuffle=False, **common),
        "test": DataLoader(ImageDataset(splits.test, eval_tf), shuffle=False, **common),
    }


def _set_determinism(cfg: Config) -> None:
    seed_all(cfg.seed)
    if cfg.deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (read when CUDA initialises)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def evaluate_checkpoint(cfg: Config, model: MultiLabelModel, loaders: dict[str, DataLoader]) -> dict:
    """--eval-only: val and test metrics of a checkpoint's weights, written beside it."""
    ckpt = load_checkpoint(cfg.eval_only)
    model.load_state_dict(ckpt["model"])
    device = torch.device(cfg.device)
    scores = {split: evaluate(model, loaders[split], device, cfg.threshold, split) for split in ("val", "test")}
    out = cfg.eval_only.parent / f"eval_{cfg.eval_only.stem}.json"
    write_json_atomic(out, {"checkpoint": str(cfg.eval_only), "epoch": ckpt["train_state"]["epoch"],
                            "config": cfg.to_dict(), **scores})
    log.info(f"{cfg.eval_only} (epoch {ckpt['train_state']['epoch']}): val mAP {scores['val']['map']:.2f}, "
             f"test mAP {scores['test']['map']:.2f} -> {out}")
    return scores


def run(cfg: Config) -> dict:
    """One run, or with --search one run per grid point (search.py)."""
    cfg = restart_if_unstarted(cfg, cfg.out)
    if cfg.search:
        return run_search(cfg, run_once)
    return run_once(cfg)


def run_once(cfg: Config) -> dict:
    _set_determinism(cfg)
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
    backbone = create_backbone(cfg.model, cfg.pretrained, cfg.pretrained_weights, ClipSpec(cfg.clip_model, cfg.clip_weights))
    model = MultiLabelModel(backbone, splits.num_classes).to(device)
    if cfg.eval_only:
        return evaluate_checkpoint(cfg, model, make_loaders(cfg, splits, model))
    loss_fn = create_loss(cfg.loss, cfg.hyper, len(splits.train.images), splits.num_classes).to(device)
    loss_fn.attach_train_labels(torch.from_numpy(splits.train.labels))
    uses_clip = isinstance(loss_fn, VLPLLoss)
    if uses_clip:  # frozen-CLIP pseudo-labels: scored once (cached), before the first step
        views = 2 if PRESETS[cfg.dataset].hflip else 1
        attach_clip_pseudo_labels(loss_fn, cfg, splits.train, views, device)
    if init is not None:
        init(model, loss_fn)
    loaders = make_loaders(cfg, splits, model, flip_views=uses_clip)
    info = {
        "image_size": model.preprocess.size,
        # NUS-WIDE's two variants give different numbers: every result names the one it used
        "dataset_variant": dataset_variant(cfg.dataset, cfg.data_dir, len(splits.train.images) + len(splits.val.images),
                                           len(splits.test.images)),
    }
    return train_and_record(cfg, out, model, loss_fn, loaders, cfg.epochs, info).summary()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    try:
        run(parse_args(argv))
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT; results.json already says "interrupted"
    return 0


if __name__ == "__main__":
    sys.exit(main())
