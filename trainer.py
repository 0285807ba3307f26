"""One training phase into one run folder: optimiser, checkpoints, resume, interruption.

`train_and_record` is shared by end-to-end training and the linear modes: it
builds Adam over the model and the loss's own parameter groups (ROLE's label
estimator at lr x10), resumes from `last.pt` when asked, runs `engine.fit`, writes
`last.pt` after every epoch and `best.pt` on a val gain, and marks the results
interrupted when a non-finite loss or Ctrl-C ends the run.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from checkpoint import BEST, LAST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from engine import NonFiniteLoss, TrainState, fit
from errors import UserError
from instrumentation import RunLog
from losses import SPMLLoss

log = logging.getLogger(__name__)


def _train_state(out: Path, ckpt: dict | None) -> TrainState:
    """A fresh state, or the one saved in last.pt with the best weights read back from best.pt."""
    if ckpt is None:
        return TrainState()
    state = TrainState(**ckpt["train_state"])
    if state.best_epoch and (out / BEST).is_file():
        best = load_checkpoint(out / BEST)
        # best.pt is written before last.pt: a newer best.pt belongs to an epoch that will be re-run
        if best["train_state"]["best_epoch"] == state.best_epoch:
            state.best_weights = best["model"]
    return state


def _checkpoint_of(cfg, out: Path) -> dict | None:
    if not cfg.resume:
        return None
    results = out / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "completed":
        raise UserError(f"--resume {out}: that run has completed; nothing to resume")
    if not (out / LAST).is_file():
        raise UserError(f"--resume {out}: no {LAST} there (killed before its first epoch ended?); start the run again")
    ckpt = load_checkpoint(out / LAST)
    if ckpt["config"] != cfg.to_dict() | {k: ckpt["config"].get(k) for k in ("device", "num_workers", "out")}:
        raise UserError(f"{out / LAST} was written with another configuration than {out / 'config.json'}")
    return ckpt


def train_and_record(cfg, out: Path, model: nn.Module, loss_fn: SPMLLoss, loaders: dict[str, DataLoader],
                     epochs: int, info: dict | None = None) -> TrainState:
    """Train `epochs` epochs into the run folder `out` (resumed from its last.pt with --resume)."""
    device = torch.device(cfg.device)
    optimizer = torch.optim.Adam([{"params": model.parameters()}, *loss_fn.param_groups(cfg.lr)], lr=cfg.lr)
    ckpt = _checkpoint_of(cfg, out)
    state = _train_state(out, ckpt)
    run_log = RunLog(out, cfg.to_dict(), ckpt["epochs"] if ckpt else None)
    run_log.info.update(info or {}, phase_epochs=epochs)
    train_gen = loaders["train"].generator
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loss_fn.load_state_dict(ckpt["loss_state"])
        restore_rng_state(ckpt["rng"], train_gen)  # last: model building above drew from the RNGs

    def save_checkpoints(state: TrainState, improved: bool) -> None:
        meta = {"train_state": {k: v for k, v in vars(state).items() if k != "best_weights"}, "config": cfg.to_dict()}
        if improved:  # before last.pt: if killed in between, the resumed run redoes this epoch and best.pt
            save_checkpoint(out / BEST, {"model": model.state_dict(), **meta})
        save_checkpoint(out / LAST, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "loss_state": loss_fn.state_dict(), "epochs": run_log.epochs,
                                     "rng": rng_state(train_gen), **meta})

    try:
        log.info(f"config: {cfg.to_dict()}")
        log.info(f"{cfg.dataset}: {len(loaders['train'].dataset)} train / {len(loaders['val'].dataset)} val / "
                 f"{len(loaders['test'].dataset)} test, device {device}, {epochs} epochs -> {out}")
        if ckpt is not None:
            log.info(f"resuming {out} after epoch {state.epoch}")
        try:
            state = fit(model, loss_fn, optimizer, loaders, device, epochs, cfg.patience, cfg.threshold, run_log,
                        state=state, on_epoch_end=save_checkpoints)
        except (NonFiniteLoss, KeyboardInterrupt) as err:
            # Nothing of the unfinished epoch is kept: last.pt and best.pt stay as the last completed epoch left them.
            reason = str(err) if isinstance(err, NonFiniteLoss) else "interrupted by the user (Ctrl-C)"
            run_log.write_results(state.summary(), "interrupted", reason=reason, last_completed_epoch=state.epoch)
            log.error(f"stopped during epoch {state.epoch + 1}: {LAST} and results.json (marked interrupted) hold "
                      f"epoch {state.epoch}; `python main.py --resume {out}` continues from there")
            raise
        run_log.write_results(state.summary(), "completed")
        log.info(f"best epoch {state.best_epoch}: val mAP {state.best_val_map:.2f}, "
                 f"test mAP {state.best_test_map:.2f} -> {out / 'results.json'}")
        return state
    finally:
        run_log.close()
