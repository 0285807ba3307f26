"""The training loop: one epoch of training, scoring a split, and the epoch loop with early stopping."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from errors import UserError
from instrumentation import RunLog, SkippedImages, epoch_line
from methods.base import ONE_PROCESS, SPMLLoss
from metrics import compute_metrics
from training import distributed, stop
from training.speed import StepOptions

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: training stops at once."""


@dataclass
class TrainState:
    """Counters and the best result so far; the only state that changes during a run."""

    epoch: int = 0  # the last completed epoch
    best_epoch: int = 0
    best_val_map: float = -math.inf
    best_test_map: float = math.nan
    best_weights: dict = field(default_factory=dict)
    epochs_without_gain: int = 0
    best_source: str | None = None  # with --ema: "regular" or "ema", the weights kept as best

    def update(self, epoch: int, val_map: float, test_map: float, model: nn.Module) -> bool:
        """Record an epoch's scores; keeps a copy of the weights when val mAP improves. True if it did."""
        self.epoch = epoch
        if val_map > self.best_val_map:
            self.best_epoch, self.best_val_map, self.best_test_map = epoch, val_map, test_map
            self.best_weights = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            self.epochs_without_gain = 0
            return True
        self.epochs_without_gain += 1
        return False

    def should_stop(self, patience: int) -> bool:
        return patience > 0 and self.epochs_without_gain >= patience

    def summary(self) -> dict:
        out = {"best_epoch": self.best_epoch, "best_val_map": self.best_val_map, "test_map": self.best_test_map}
        if self.best_source is not None:
            out["best_weights"] = self.best_source
        return out


def stop_reason(state: TrainState, val_map: float, patience: int, stop_drop: float) -> str | None:
    """Why training stops after the epoch that scored `val_map` (None: it goes on)."""
    if state.should_stop(patience):
        return f"val mAP has not improved for {patience} epoch(s)"
    if stop_drop > 0 and state.best_val_map - val_map > stop_drop:
        return (f"val mAP {val_map:.2f} is more than {stop_drop:g} points below the best, {state.best_val_map:.2f} "
                f"(--stop-drop)")
    return None


# Steps between host syncs: reading the loss forces the CPU to wait for the GPU, so the
# per-step losses stay on the device and are read SYNC_EVERY steps at a time.
SYNC_EVERY = 25
# Without a terminal (a batch job's log file) there is no progress bar: a line this often instead.
PROGRESS_EVERY_S = 60.0


class _Progress:
    """Without a terminal (a batch job's log, where tqdm's bar is off), a log line at least every
    PROGRESS_EVERY_S seconds, whatever the step time: the pass, its step, images/s and, in training,
    the mean loss of the steps read so far. Checked every step: a clock read, no host sync."""

    def __init__(self, bar: tqdm, what: str, steps: int):
        self.on, self.what, self.steps = bar.disable, what, steps
        self.started = self.last = time.perf_counter()

    def update(self, step: int, seen: int, mean_loss: float | None = None) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            loss = "" if mean_loss is None else f", loss {mean_loss:.4f}"
            log.info(f"{self.what} step {step}/{self.steps}: {seen / (now - self.started):.1f} images/s{loss}")


def _read_losses(window: list[torch.Tensor], steps: list[int], names: list[str], totals: dict[str, float],
                 epoch: int) -> None:
    """One host sync for the window's steps: adds each step's terms to `totals` in step order
    (the same float sums as reading every step) and stops at the first non-finite loss.
    Under torchrun the ranks' weighted losses are averaged first: the global batches' losses,
    and a non-finite loss on any rank stops every rank at the same step."""
    for step, values in zip(steps, distributed.mean_over_ranks(torch.stack(window)).tolist()):
        value, terms = values[0], values[1:]
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite loss ({value}) at epoch {epoch}, step {step}; "
                                f"lower --lr or check the data")
        for name, term in zip(names, terms):
            totals[name] = totals.get(name, 0.0) + term
        totals["loss"] = totals.get("loss", 0.0) + value
    window.clear()
    steps.clear()


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: SPMLLoss, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, options: StepOptions = StepOptions(),
                    after_step: Callable[[], None] | None = None, skipped: SkippedImages | None = None) -> dict:
    """One pass over `loader`; `after_step()` runs after every optimiser step (lr schedule, weight EMA);
    the images left out as unreadable (--skip-bad-images) are counted and noted in `skipped`.

    Under torchrun `model` is the DistributedDataParallel wrapper and `loader` gives this rank's part
    of each global batch: a loss that is a mean over images is computed on it and weighted by its share
    (distributed.share_weight), a `whole_batch` loss on the gathered global batch (distributed.GlobalBatch)."""
    model.train()
    shares = distributed.step_shares(loader)
    may_skip = getattr(loader.dataset, "skip_unreadable", False)
    totals: dict[str, float] = {}
    seen, seen_rows = 0, []
    window: list[torch.Tensor] = []  # (1 + terms) losses of the steps not yet read
    window_steps: list[int] = []
    names: list[str] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=distributed.bar_disabled())
    progress = _Progress(bar, f"epoch {epoch}", len(loader))
    for step, (images, targets, index) in enumerate(bar, start=1):
        stop.raise_pending()
        seen += len(index)
        if may_skip:
            seen_rows.append(index % len(loader.dataset))  # a mirrored view's index is its row + N (flip_views)
        # under torchrun, the rows each rank holds: the sampler's split, or, when images may be skipped, asked
        counts = (distributed.gather_counts(len(index), device) if may_skip else shares[step - 1]) if shares else None
        if (sum(counts) if counts else len(index)) == 0:  # every image of the batch was unreadable: no step
            continue
        images = options.images_to(images, device)
        targets = targets.to(device, non_blocking=True)
        index = index.to(device, non_blocking=True)
        whole = distributed.GlobalBatch(counts) if counts and loss_fn.whole_batch else ONE_PROCESS
        with options.autocast(device):
            logits = whole.gather(model(images).float())  # the loss in fp32 whatever the forward's precision
            targets, index = whole.gather(targets), whole.gather(index)
            # a loss may run the model again (PU's MixUp regulariser), at the same precision; most add nothing
            extra = loss_fn.extra_terms(model, images, logits, targets, index, whole)
        terms = {**loss_fn(logits, targets, index), **extra}
        loss = sum(terms.values())
        if counts and not loss_fn.whole_batch:
            weight = distributed.share_weight(counts)
            if weight == 0:  # none of this rank's images could be read: a zero loss, but its part in DDP's step
                terms, loss = {name: logits.sum() * 0 for name in terms}, logits.sum() * 0
            else:
                terms, loss = {name: term * weight for name, term in terms.items()}, loss * weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if window and list(terms) != names:  # a method whose terms change mid-epoch: read the others first
            _read_losses(window, window_steps, names, totals, epoch)
        names = list(terms)
        window_steps.append(step)
        window.append(torch.stack([loss.detach(), *(term.detach() for term in terms.values())]))
        if len(window) == SYNC_EVERY:
            _read_losses(window, window_steps, names, totals, epoch)
            bar.set_postfix(loss=f"{totals['loss'] / step:.4f}")
        read = step - len(window)  # the steps whose losses were read
        progress.update(step, seen, totals["loss"] / read if read else None)
    if window:
        _read_losses(window, window_steps, names, totals, epoch)
    steps = max(len(loader), 1)
    out = {name: total / steps for name, total in totals.items()}
    out["skipped_images"] = len(loader.dataset) - distributed.sum_over_ranks(seen, device)
    if may_skip and skipped is not None:
        _note_unseen(loader.dataset, distributed.gather_rows(_rows(seen_rows, device)), skipped, f"epoch {epoch}")
    return out


def _rows(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat(parts).to(device) if parts else torch.empty(0, dtype=torch.long, device=device)


def _note_unseen(dataset, seen: torch.Tensor, skipped: SkippedImages, where: str) -> None:
    """Note in `skipped` the images of `dataset` whose rows a pass did not see (left out as unreadable)."""
    if len(seen) < len(dataset):
        unseen = torch.ones(len(dataset), dtype=torch.bool)
        unseen[seen.cpu()] = False
        skipped.note([str(dataset.images[row]) for row in unseen.nonzero().flatten().tolist()], where)


def predict(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "scoring",
            options: StepOptions = StepOptions(), skipped: SkippedImages | None = None) -> torch.Tensor:
    """Sigmoid scores (N, C) of every example of `loader`, in order, in eval mode (on `device`), in fp32;
    NaN in the rows of the images left out as unreadable (--skip-bad-images), noted in `skipped`.

    Under torchrun each rank scores its slice of the split (distributed.shard_rows) and every rank
    gets all the scores, so that what is computed from them (metrics, pseudo-labels) is the same."""
    model.eval()
    num_classes = loader.dataset.labels.shape[1]
    with torch.inference_mode():
        scores, rows = [], []
        bar = tqdm(loader, desc=desc, leave=False, disable=distributed.bar_disabled())
        progress, seen = _Progress(bar, desc, len(loader)), 0
        for step, (images, _, index) in enumerate(bar, start=1):
            stop.raise_pending()
            seen += len(index)
            progress.update(step, seen)
            if len(index) == 0:  # every image of the batch was unreadable
                continue
            with options.autocast(device):
                logits = model(options.images_to(images, device))
            scores.append(torch.sigmoid(logits.float()))
            rows.append(index)
        local = torch.cat(scores) if scores else torch.empty(0, num_classes, device=device)
        scores, rows = distributed.gather_rows(local), distributed.gather_rows(_rows(rows, local.device))
        out = torch.full((len(loader.dataset), num_classes), math.nan, device=scores.device)
        out[rows] = scores
    if skipped is not None:
        _note_unseen(loader.dataset, rows, skipped, desc)
    # A normal tensor, not an inference tensor: pseudo-labelling (APL) uses the scores in autograd.
    return out.clone()


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, threshold: float, desc: str,
             options: StepOptions = StepOptions(), skipped: SkippedImages | None = None) -> dict:
    """The metrics of `loader`'s split; with images left out as unreadable, over the others, and says how many."""
    scores = predict(model, loader, device, desc, options, skipped).float().cpu().numpy()
    labels = loader.dataset.labels.numpy()
    scored = ~np.isnan(scores).any(axis=1)
    if scored.all():
        return compute_metrics(scores, labels, threshold)
    return {**compute_metrics(scores[scored], labels[scored], threshold), "skipped_images": int((~scored).sum())}


def _agree_after_epoch(model: nn.Module, ema_model: nn.Module | None) -> None:
    """Under torchrun, what the ranks may hold differently after an epoch becomes the same everywhere
    (the parameters and the loss's state already are): rank 0's buffers (BatchNorm's statistics)."""
    distributed.broadcast_buffers(model)
    if ema_model is not None:
        distributed.broadcast_buffers(ema_model)


def fit(model: nn.Module, loss_fn: SPMLLoss, optimizer: torch.optim.Optimizer, loaders: dict[str, DataLoader],
        device: torch.device, epochs: int, patience: int, threshold: float, run: RunLog,
        state: TrainState | None = None, on_epoch_end: Callable[[TrainState, bool], None] | None = None,
        options: StepOptions = StepOptions(), after_step: Callable[[], None] | None = None,
        ema_model: nn.Module | None = None, train_model: nn.Module | None = None, stop_drop: float = 0.0) -> TrainState:
    """Train, validate and test each epoch; keep the best-val weights; stop after `patience` epochs without gain,
    or (`stop_drop` > 0) when val mAP falls more than `stop_drop` points below the best.

    A resumed run passes its restored `state` and continues after `state.epoch`;
    `on_epoch_end(state, improved)` runs after each epoch is logged (checkpoints);
    `after_step()` after every optimiser step. With `ema_model` (the weight EMA) both
    the regular and the EMA weights are scored each epoch, both are logged, and the
    better of the two on val is the epoch's score (never chosen on test). `train_model` is what
    the training steps call (torchrun: the DistributedDataParallel wrapper of `model`).
    """
    state = state if state is not None else TrainState()
    score_train = lambda: predict(model, loaders["train_eval"], device, "scoring train set", options,  # noqa: E731
                                  run.skipped)
    for epoch in range(state.epoch + 1, epochs + 1):
        started = time.perf_counter()
        loss_fn.start_epoch(epoch, score_train)
        loaders["train"].dataset.set_epoch(epoch)  # the epoch its per-image random choices are drawn for
        train = train_one_epoch(train_model or model, loaders["train"], loss_fn, optimizer, device, epoch, options,
                                after_step, run.skipped)
        _agree_after_epoch(model, ema_model)
        val = evaluate(model, loaders["val"], device, threshold, "val", options, run.skipped)
        test = evaluate(model, loaders["test"], device, threshold, "test", options, run.skipped)
        record = {"epoch": epoch, "train_loss": train.pop("loss"), "skipped_images": train.pop("skipped_images"),
                  "val_map": val["map"], "test_map": test["map"],
                  "train_terms": train, "val": val, "test": test, "time_s": time.perf_counter() - started}
        chosen, val_map, test_map = model, val["map"], test["map"]
        if ema_model is not None:
            ema_val = evaluate(ema_model, loaders["val"], device, threshold, "val (EMA)", options, run.skipped)
            ema_test = evaluate(ema_model, loaders["test"], device, threshold, "test (EMA)", options, run.skipped)
            record.update(ema_val_map=ema_val["map"], ema_test_map=ema_test["map"], ema_val=ema_val, ema_test=ema_test,
                          selected="ema" if ema_val["map"] > val["map"] else "regular",
                          time_s=time.perf_counter() - started)
            if record["selected"] == "ema":
                chosen, val_map, test_map = ema_model, ema_val["map"], ema_test["map"]
        improved = state.update(epoch, val_map, test_map, chosen)
        if improved and ema_model is not None:
            state.best_source = record["selected"]
        run.log_epoch(record, state.summary())
        log.info(epoch_line(record, epochs, improved))
        if on_epoch_end is not None:
            on_epoch_end(state, improved)
        if reason := stop_reason(state, val_map, patience, stop_drop):
            log.info(f"{reason}: stopping early")
            break
    return state
