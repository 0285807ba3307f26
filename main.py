"""Train a single-positive multi-label classifier and report its mAP.

    python main.py -d coco -l EM_APL -g 0 -s 1
    python main.py              # the embedded digits dataset, prepared on first use

Wires the pieces: config -> data -> backbone -> loss -> loop (engine.fit).
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from checkpoint import BEST, LAST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from clip_models import ClipSpec
from config import Config, parse_args
from dataset_provenance import dataset_variant
from datasets import DatasetSplits, ImageDataset, collate_skipping, load_splits
from engine import NonFiniteLoss, TrainState, evaluate, fit
from errors import UserError
from instrumentation import RunLog, write_json_atomic
from losses import LOSSES, create_loss
from models import MultiLabelModel, create_backbone
from presets import PRESETS
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
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (read when CUDA initialises)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _train_state(cfg: Config, ckpt: dict | None) -> TrainState:
    """A fresh state, or the one saved in last.pt with the best weights read back from best.pt."""
    if ckpt is None:
        return TrainState()
    state = TrainState(**ckpt["train_state"])
    if state.best_epoch and (cfg.out / BEST).is_file():
        best = load_checkpoint(cfg.out / BEST)
        # best.pt is written before last.pt: a newer best.pt belongs to an epoch that will be re-run
        if best["train_state"]["best_epoch"] == state.best_epoch:
            state.best_weights = best["model"]
    return state


def _checkpoint_of(cfg: Config) -> dict | None:
    if not cfg.resume:
        return None
    results = cfg.out / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "completed":
        raise UserError(f"--resume {cfg.out}: that run has completed; nothing to resume")
    if not (cfg.out / LAST).is_file():
        raise UserError(f"--resume {cfg.out}: no {LAST} there (killed before its first epoch ended?); start the run again")
    ckpt = load_checkpoint(cfg.out / LAST)
    if ckpt["config"] != cfg.to_dict() | {k: ckpt["config"].get(k) for k in ("device", "num_workers", "out")}:
        raise UserError(f"{cfg.out / LAST} was written with another configuration than {cfg.out / 'config.json'}")
    return ckpt


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
    _set_determinism(cfg)
    if cfg.dataset == "digits":
        prepare_digits(cfg)
    label_view = LOSSES[cfg.loss].label_view
    splits = load_splits(cfg.data_dir, cfg.dataset, cfg.image_root, label_view, cfg.val_set_variant)
    device = torch.device(cfg.device)
    backbone = create_backbone(cfg.model, cfg.pretrained, cfg.pretrained_weights, ClipSpec(cfg.clip_model, cfg.clip_weights))
    model = MultiLabelModel(backbone, splits.num_classes).to(device)
    loss_fn = create_loss(cfg.loss, cfg.hyper, len(splits.train.images), splits.num_classes).to(device)
    uses_clip = isinstance(loss_fn, VLPLLoss)
    if uses_clip:  # frozen-CLIP pseudo-labels: scored once (cached), before the first step
        views = 2 if PRESETS[cfg.dataset].hflip else 1
        attach_clip_pseudo_labels(loss_fn, cfg, splits.train, views, device)
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=cfg.lr)
    loaders = make_loaders(cfg, splits, model, flip_views=uses_clip)
    if cfg.eval_only:
        return evaluate_checkpoint(cfg, model, loaders)

    ckpt = _checkpoint_of(cfg)
    state = _train_state(cfg, ckpt)
    run_log = RunLog(cfg.out, cfg.to_dict(), ckpt["epochs"] if ckpt else None)
    run_log.info["image_size"] = model.preprocess.size
    # NUS-WIDE's two variants give different numbers: every result names the one it used
    run_log.info["dataset_variant"] = dataset_variant(
        cfg.dataset, cfg.data_dir, len(splits.train.images) + len(splits.val.images), len(splits.test.images))
    train_gen = loaders["train"].generator
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loss_fn.load_state_dict(ckpt["loss_state"])
        restore_rng_state(ckpt["rng"], train_gen)  # last: model building above drew from the RNGs

    def save_checkpoints(state: TrainState, improved: bool) -> None:
        meta = {"train_state": {k: v for k, v in vars(state).items() if k != "best_weights"}, "config": cfg.to_dict()}
        if improved:  # before last.pt: if killed in between, the resumed run redoes this epoch and best.pt
            save_checkpoint(cfg.out / BEST, {"model": model.state_dict(), **meta})
        save_checkpoint(cfg.out / LAST, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "loss_state": loss_fn.state_dict(), "epochs": run_log.epochs,
                                         "rng": rng_state(train_gen), **meta})

    try:
        log.info(f"config: {cfg.to_dict()}")
        log.info(f"{cfg.dataset}: {len(splits.train.images)} train / {len(splits.val.images)} val / "
                 f"{len(splits.test.images)} test images, {splits.num_classes} classes; device {device}")
        if ckpt is not None:
            log.info(f"resuming {cfg.out} after epoch {state.epoch}")
        try:
            state = fit(model, loss_fn, optimizer, loaders, device, cfg.epochs, cfg.patience, cfg.threshold, run_log,
                        state=state, on_epoch_end=save_checkpoints)
        except (NonFiniteLoss, KeyboardInterrupt) as err:
            # Nothing of the unfinished epoch is kept: last.pt and best.pt stay as the last completed epoch left them.
            reason = str(err) if isinstance(err, NonFiniteLoss) else "interrupted by the user (Ctrl-C)"
            run_log.write_results(state.summary(), "interrupted", reason=reason, last_completed_epoch=state.epoch)
            log.error(f"stopped during epoch {state.epoch + 1}: {LAST} and results.json (marked interrupted) hold "
                      f"epoch {state.epoch}; `python main.py --resume {cfg.out}` continues from there")
            raise
        run_log.write_results(state.summary(), "completed")
        log.info(f"best epoch {state.best_epoch}: val mAP {state.best_val_map:.2f}, test mAP {state.best_test_map:.2f} "
                 f"-> {cfg.out / 'results.json'}")
        return state.summary()
    finally:
        run_log.close()


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
