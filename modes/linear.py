"""Cole et al.'s training modes: end to end, a linear classifier on cached features, or both in turn.

    --train-mode end_to_end             backbone + classifier on images (default)
    --train-mode linear_fixed_features  only a linear layer, on the pooled features that
                                        `python -m preproc.extract_features` cached (no image is read)
    --train-mode linear_init            the linear phase (--linear-epochs, 25), then end-to-end
                                        fine-tuning (--epochs) from its best classifier

Feature files hold one row per row of the formatted files, in the same order; by
default they sit beside them (`--train-features` / `--test-features` name others):

    <data dir>/train_features_<backbone>.npy   (N_official_train, D) float
    <data dir>/val_features_<backbone>.npy     (N_official_val = test, D) float

A dataset folder holding them and no images is valid for `linear_fixed_features`.
Both linear phases train every epoch and keep the best (Cole et al.'s protocol: no early stop).
Features are only as good as the backbone: a randomly initialised one (digits_cnn has
no pretrained weights) gives features a linear layer cannot do much with, and the run says so.
A backbone without pretrained weights (e.g. `digits_cnn`) is initialised with
FEATURE_SEED both when features are extracted and when `linear_init` fine-tunes,
so the fine-tuned network is the one the linear classifier was trained on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from config import Config
from datasets import SPLIT_SEED, VAL_FRAC, DatasetSplits, generate_split, load_splits
from errors import UserError
from fileio import load_npy, write_json_atomic
from instrumentation import claim_run_folder
from losses import LOSSES
from methods.base import SPMLLoss
from models import Backbone, create_backbone
from modes.end_to_end import train_end_to_end
from modes.setup import build_loss
from training.distributed import batch_sampler, is_main
from training.trainer import resumed_phase, train_and_record

log = logging.getLogger(__name__)

FEATURE_SEED = 0  # initialisation of a backbone that has no pretrained weights, for features and fine-tuning


def feature_path(data_dir: Path, split: str, backbone: str) -> Path:
    """`split` is an official split: `train` (our train + val) or `val` (our test)."""
    return data_dir / f"{split}_features_{backbone}.npy"


def create_feature_backbone(name: str, pretrained: bool) -> Backbone:
    """The backbone whose pooled features are cached: pretrained weights, or the FEATURE_SEED initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FEATURE_SEED)
        return create_backbone(name, pretrained)


def load_features(path: Path, num_rows: int, fix: str, skip_unreadable: bool = False) -> np.ndarray:
    """The (num_rows, D) float32 features of `path`. A row that is not finite is an image that could not be
    read at extraction (`extract_features --skip-bad-images`): refused, or left out with `skip_unreadable`."""
    features = load_npy(path, fix)
    if features.ndim != 2 or features.shape[0] != num_rows:
        raise UserError(f"{path} has shape {features.shape} but its label files have {num_rows} rows; "
                        f"the features are stale or from another dataset: {fix}")
    if features.dtype.kind != "f":
        raise UserError(f"{path} holds {features.dtype} values, expected floating-point features: {fix}")
    missing = ~np.isfinite(features).all(axis=1)
    if missing.any() and not skip_unreadable:
        raise UserError(f"{path}: {int(missing.sum())} row(s) are not finite (first: row {int(missing.argmax())}), "
                        f"images that could not be read when the features were extracted; re-extract them once the "
                        f"images are fixed, or leave those images out with --skip-bad-images")
    return np.ascontiguousarray(features, dtype=np.float32)


def _feature_files(cfg: Config) -> tuple[Path, Path, str]:
    """(train features, test features, how to provide them) of the run."""
    train = cfg.train_features or feature_path(cfg.data_dir, "train", cfg.model)
    test = cfg.test_features or feature_path(cfg.data_dir, "val", cfg.model)
    fix = (f"extract them with `python -m preproc.extract_features -d {cfg.dataset} -m {cfg.model} --data-dir "
           f"{cfg.data_dir}`, or point at existing files with --train-features / --test-features")
    return train, test, fix


class FeatureDataset(Dataset):
    """In-memory features; indexed by a list of rows, it returns the whole batch (features, labels, index).
    With `skip_unreadable`, rows that are not finite (their image was unreadable at extraction) are left
    out of every batch, as datasets.ImageDataset leaves out an unreadable image; `images` name them."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, images: np.ndarray | None = None,
                 skip_unreadable: bool = False):
        self.features = torch.from_numpy(features)
        self.labels = torch.from_numpy(labels)
        self.images, self.skip_unreadable = images, skip_unreadable
        self.readable = torch.isfinite(self.features).all(dim=1) if skip_unreadable else None

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Cached features have no random choice to draw (datasets.ImageFiles.set_epoch)."""

    def __getitem__(self, rows: list[int]):
        index = torch.as_tensor(rows)
        if self.skip_unreadable:
            index = index[self.readable[index]]
        return self.features[index], self.labels[index], index


def _batches(dataset: FeatureDataset, bsize: int, shuffle: bool, seed: int) -> DataLoader:
    # Whole batches by one tensor gather: per-row collation costs more than the linear layer itself.
    # The shuffle generator is also the loader's, where the checkpoint saves and restores it (trainer.py).
    # Under torchrun, this process's share of the batches (training/distributed.py).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, sampler=batch_sampler(dataset, bsize, shuffle, generator), batch_size=None,
                      generator=generator)


def feature_loaders(cfg: Config) -> tuple[dict[str, DataLoader], int, DatasetSplits]:
    """Loaders over cached features (train, train_eval, val, test), the feature size and the splits."""
    splits = load_splits(cfg.data_dir, cfg.dataset, cfg.image_root, LOSSES[cfg.loss].label_view, cfg.val_set_variant,
                         check_images=False)
    num_official_train = len(splits.train.images) + len(splits.val.images)
    train_idx, val_idx = generate_split(num_official_train, VAL_FRAC, SPLIT_SEED)  # the rows load_splits took
    train_path, test_path, fix = _feature_files(cfg)
    features = load_features(train_path, num_official_train, fix, cfg.skip_bad_images)
    test_features = load_features(test_path, len(splits.test.images), fix, cfg.skip_bad_images)
    if test_features.shape[1] != features.shape[1]:
        raise UserError(f"train features have {features.shape[1]} dimensions but test features {test_features.shape[1]}")
    sets = {name: FeatureDataset(rows, split.labels, split.images, cfg.skip_bad_images) for name, rows, split in
            (("train", features[train_idx], splits.train), ("val", features[val_idx], splits.val),
             ("test", test_features, splits.test))}
    loaders = {
        "train": _batches(sets["train"], cfg.bsize, True, cfg.seed),
        "train_eval": _batches(sets["train"], cfg.bsize, False, cfg.seed),
        "val": _batches(sets["val"], cfg.bsize, False, cfg.seed),
        "test": _batches(sets["test"], cfg.bsize, False, cfg.seed),
    }
    return loaders, features.shape[1], splits


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device):
    """A linear step is a few microsecond-scale ops; intra-op threads only add sync overhead,
    and on a busy CPU they make an epoch ~30x slower (measured: 1.8 vs 50 ms/step, 2 loaded cores)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_linear_mode(cfg: Config) -> dict:
    """`linear_fixed_features`, or `linear_init` (then end-to-end fine-tuning from the linear phase).

    linear_init keeps its phases in `<out>/linear/` and `<out>/fine_tune/`; --resume skips
    a completed phase and resumes the other (trainer.resumed_phase).
    """
    loaders, feature_dim, splits = feature_loaders(cfg)
    if not cfg.pretrained and cfg.train_features is None:
        log.warning(f"{cfg.model} features come from a randomly initialised network (no pretrained weights): a linear "
                    f"layer on them learns little (on digits, val mAP near the base rate); the linear modes are for "
                    f"pretrained backbones (e.g. -m resnet50 with its ImageNet weights)")
    device = torch.device(cfg.device)
    linear_epochs = cfg.epochs if cfg.train_mode == "linear_fixed_features" else cfg.linear_epochs
    classifier = nn.Linear(feature_dim, splits.num_classes).to(device)
    loss_fn = build_loss(cfg, splits.train, splits.num_classes, device, linear_epochs)
    if cfg.train_mode == "linear_fixed_features":
        with single_thread_on_cpu(device):
            return train_and_record(cfg, cfg.out, classifier, loss_fn, loaders, linear_epochs).summary()

    if not cfg.resume and is_main():
        claim_run_folder(cfg.out, cfg.to_dict())  # what --resume reads
    # the linear phase trains every epoch and keeps the best, as Cole et al.'s
    linear_cfg, linear = resumed_phase(dataclasses.replace(cfg, patience=0), cfg.out / "linear", loss_fn)
    if linear is None:
        with single_thread_on_cpu(device):
            linear = train_and_record(linear_cfg, cfg.out / "linear", classifier, loss_fn, loaders, linear_epochs)
    carried = loss_fn.state_dict() if loss_fn.carries_state_across_phases else None

    def init(model: nn.Module, fine_tune_loss: SPMLLoss) -> None:
        model.backbone.load_state_dict(create_feature_backbone(cfg.model, cfg.pretrained).features.state_dict())
        model.classifier.load_state_dict(linear.best_weights)
        if carried is not None:
            fine_tune_loss.load_state_dict(carried)

    fine_tune_cfg, fine_tuned = resumed_phase(cfg, cfg.out / "fine_tune")
    if fine_tuned is not None:
        summary = fine_tuned.summary()
    else:
        log.info(f"linear_init: fine-tuning end to end from the linear phase's epoch {linear.best_epoch}")
        summary = train_end_to_end(fine_tune_cfg, cfg.out / "fine_tune", init=init)
    result = {**summary, "linear_phase": linear.summary()}
    if is_main():
        write_json_atomic(cfg.out / "results.json", {"config": cfg.to_dict(), "status": "completed", **result})
    return result
