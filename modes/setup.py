"""What every training mode sets up the same way: determinism, the embedded dataset, image loaders, the loss.

`build_loss` is the one place a loss is built, in every mode: it creates the
registered loss and attaches whatever it needs before the first step (the train
labels; for VLPL the frozen-CLIP cosines of the train images).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch
from torch.utils.data import DataLoader

from class_names import load_class_names
from config import Config
from datasets import DatasetSplits, ImageDataset, Split
from device_decode import device_loader, image_codec
from losses import create_loss
from methods.base import SPMLLoss
from methods.vlpl.scores import train_similarities
from methods.vlpl.towers import ClipSpec
from models import MultiLabelModel
from presets import preset_of
from training.checkpoint import seed_all
from training.distributed import batch_sampler, main_first

log = logging.getLogger(__name__)


def set_determinism(cfg: Config) -> None:
    seed_all(cfg.seed)
    if cfg.deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (read when CUDA initialises)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


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


def build_loss(cfg: Config, train: Split, num_classes: int, device: torch.device, epochs: int,
               views: int = 1) -> SPMLLoss:
    """The run's loss with everything it needs attached; `epochs` of the phase it trains,
    `views` the train images' views for CLIP scores (2 when the train set flips)."""
    hyper = dataclasses.replace(cfg.hyper, epochs=epochs)
    loss_fn = create_loss(cfg.loss, hyper, len(train.labels), num_classes).to(device)
    loss_fn.attach_train_labels(torch.from_numpy(train.labels))
    if loss_fn.needs_clip_scores:  # frozen-CLIP pseudo-labels: scored once (cached), before the first step
        names = load_class_names(cfg.dataset, cfg.data_dir, num_classes)
        with main_first():  # under torchrun rank 0 scores and caches them, the others read the cache
            cosines = train_similarities(cfg.dataset, cfg.data_dir, train.images, names,
                                         ClipSpec(cfg.clip_model, cfg.clip_weights), views, device,
                                         cfg.text_features, cfg.prompt_template, cfg.num_workers,
                                         cfg.skip_bad_images, **loss_fn.clip_scoring())
        loss_fn.set_clip_cosines(cosines)
    return loss_fn


def image_views(cfg: Config) -> int:
    """How many views of each train image the loss may see: 2 when the dataset's train transform flips."""
    return 2 if preset_of(cfg.dataset).hflip else 1


def make_loaders(cfg: Config, splits: DatasetSplits, model: MultiLabelModel,
                 flip_views: bool = False, crop_flips: int = 0) -> dict[str, DataLoader]:
    """`flip_views`: the train set reports a flipped image in its index (see ImageDataset), with `crop_flips`
    flips drawn for the crops of a sample; the crops are flipped only where the images are."""
    hflip = preset_of(cfg.dataset).hflip
    crop_flips = crop_flips if hflip else 0
    if cfg.decode == "gpu":
        return _device_decode_loaders(cfg, splits, model, hflip, flip_views, crop_flips)
    train_tf = model.preprocess.transform(train=True, hflip=hflip)
    eval_tf = model.preprocess.transform(train=False, hflip=False)
    common = dict(num_workers=cfg.num_workers, pin_memory=cfg.device != "cpu", persistent_workers=cfg.num_workers > 0)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)  # the order; its state is in last.pt
    # flips and crops are drawn per image from the seed and the epoch (preprocess.ImageDraws), whatever the workers
    train_set = ImageDataset(splits.train, train_tf, skip_unreadable=cfg.skip_bad_images, flip_views=flip_views and hflip,
                             seed=cfg.seed, crop_flips=crop_flips if hflip else 0)
    # fresh train workers each epoch: they see the epoch the dataset was set to (ImageFiles.set_epoch)
    train_common = {**common, "persistent_workers": False}

    def in_order(split: Split) -> DataLoader:  # never drops the last partial batch (a trap of the references)
        dataset = ImageDataset(split, eval_tf, skip_unreadable=cfg.skip_bad_images)
        return DataLoader(dataset, batch_sampler=batch_sampler(dataset, cfg.bsize, shuffle=False),
                          collate_fn=dataset.collate, **common)

    return {
        "train": DataLoader(train_set, batch_sampler=batch_sampler(train_set, cfg.bsize, True, shuffle_gen),
                            generator=shuffle_gen, collate_fn=train_set.collate, **train_common),
        # the train images in order, without augmentation: for pseudo-labelling passes
        "train_eval": in_order(splits.train),
        "val": in_order(splits.val),
        "test": in_order(splits.test),
    }


def _device_decode_loaders(cfg: Config, splits: DatasetSplits, model: MultiLabelModel, hflip: bool,
                           flip_views: bool, crop_flips: int) -> dict:
    """--decode gpu: the same four loaders, decoding on the run's device (device_decode.py)."""
    device = torch.device(cfg.device)
    codec = image_codec(device)
    common = dict(preprocess=model.preprocess, device=device, codec=codec, batch_size=cfg.bsize,
                  num_workers=cfg.num_workers, batches=batch_sampler, skip_unreadable=cfg.skip_bad_images)
    return {
        "train": device_loader(splits.train, train=True, hflip=hflip, flip_views=flip_views,
                               generator=torch.Generator().manual_seed(cfg.seed), seed=cfg.seed,
                               crop_flips=crop_flips, **common),
        "train_eval": device_loader(splits.train, **common),
        "val": device_loader(splits.val, **common),
        "test": device_loader(splits.test, **common),
    }
