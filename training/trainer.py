"""One training phase into one run folder: optimiser, checkpoints, resume, interruption.

`train_and_record` is shared by end-to-end training and the linear modes: it
builds Adam over the model (its final layer at --classifier-lr-mult x lr) and the
loss's own parameter groups (ROLE's label estimator at lr x10) with the recipe's
options (training/recipe.py: weight decay, per-step schedule, weight EMA), resumes
from `last.pt` when asked, runs `engine.fit`, writes `last.pt` after every epoch and
`best.pt` on a val gain, and marks the results diverged (non-finite loss) or
interrupted (Ctrl-C, SIGTERM) when the run ends early, or failed (with the error as its reason;
under torchrun, the error of the process that failed first), naming the last checkpoint.

Runs made of several phases, each in its own folder (linear_init's two, the
grid points of --search), go on under --resume phase by phase: `resumed_phase`
says whether a phase's folder is done, to resume, or to start.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import Config, with_defaults
from errors import ReportedElsewhere, UserError
from instrumentation import RUN_FILES, RunLog, run_results, run_status, test_oracle
from methods.base import SPMLLoss
from models import load_weights
from training import distributed, processes, stop
from training.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from training.engine import NonFiniteLoss, TrainState, fit
from training.recipe import ModelEma, build_optimizer, build_scheduler, freeze_batchnorm, restrict_training
from training.speed import StepOptions, prepare_model

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


def _checkpoint_of(cfg: Config, out: Path) -> dict | None:
    if not cfg.resume:
        return None
    if run_status(out) == "completed":
        raise UserError(f"--resume {out}: that run has completed; nothing to resume")
    if not (out / LAST).is_file():
        raise UserError(f"--resume {out}: no {LAST} there; that folder does not hold a run of this configuration")
    ckpt = load_checkpoint(out / LAST)
    saved = with_defaults(ckpt["config"])  # a checkpoint older than a setting ran with its default
    if saved != cfg.to_dict() | {k: ckpt["config"].get(k) for k in ("device", "num_workers", "out")}:
        raise UserError(f"{out / LAST} was written with another configuration than {out / 'config.json'}")
    return ckpt


def model_param_groups(model: nn.Module, lr: float, classifier_lr_mult: float) -> list[dict]:
    """The model's optimiser groups: one, or the final layer apart at `classifier_lr_mult` x lr (Kim et
    al. 2022's lr_mult). The final layer is `model.classifier`, or the whole model in the linear modes."""
    trainable = lambda module: [p for p in module.parameters() if p.requires_grad]  # noqa: E731 (--train-scope)
    if classifier_lr_mult == 1:  # one group, as before the option existed: older last.pt files still resume
        return [{"params": trainable(model)}]
    head = model if isinstance(model, nn.Linear) else model.classifier
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in trainable(model) if id(p) not in head_ids]
    return [*([{"params": body}] if body else []),
            {"params": trainable(head), "lr": classifier_lr_mult * lr}]


def train_and_record(cfg: Config, out: Path, model: nn.Module, loss_fn: SPMLLoss, loaders: dict[str, DataLoader],
                     epochs: int, info: dict | None = None) -> TrainState:
    """Train `epochs` epochs into the run folder `out` (resumed from its last.pt with --resume)."""
    device = torch.device(cfg.device)
    options = StepOptions.from_config(cfg)
    prepare_model(model, options, cfg.compile)
    # before DDP, which registers the parameters that need gradients once, at wrapping
    trainable, total = restrict_training(model, cfg.train_scope)
    if cfg.train_scope != "all":
        log.info(f"--train-scope {cfg.train_scope}: {trainable:,} of {total:,} parameters train")
    train_model = distributed.wrap(model, device, cfg.sync_bn)  # before --freeze-bn's hooks: SyncBN replaces modules
    if cfg.freeze_bn:
        log.info(f"--freeze-bn: {freeze_batchnorm(model)} BatchNorm layers run in eval mode")
    optimizer = build_optimizer([*model_param_groups(model, cfg.lr, cfg.classifier_lr_mult),
                                 *loss_fn.param_groups(cfg.lr)], cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(cfg.sched, optimizer, len(loaders["train"]), cfg.sched_epochs)
    ema = ModelEma(model, cfg.ema) if cfg.ema else None  # from the weights training starts with

    def after_step() -> None:  # the authors' order: optimiser step, then schedule, then EMA
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)

    ckpt = _checkpoint_of(cfg, out)
    state = _train_state(out, ckpt)
    here = distributed.world()
    run_log = RunLog(out, cfg.to_dict(), ckpt["epochs"] if ckpt else None, writer=here.is_main)
    run_log.info.update(info or {}, phase_epochs=epochs, parameters={"trainable": trainable, "total": total})
    # --bsize is the global batch; what each process took of it, now and since each change of the process count
    world_sizes = _world_sizes(out, ckpt, state.epoch + 1, here.size, cfg.bsize)
    run_log.info.update(world_size=here.size, bsize_global=cfg.bsize, bsize_per_process=cfg.bsize // here.size,
                        world_sizes=world_sizes)
    # what else sets the float sums: another torch or thread count rounds differently, a digit away on a CPU
    run_log.info.update(torch_version=torch.__version__, cpu_threads=torch.get_num_threads())
    train_gen = loaders["train"].generator
    if ckpt is not None:
        load_weights(model, ckpt["model"], out / LAST)
        optimizer.load_state_dict(ckpt["optimizer"])
        loss_fn.load_state_dict(ckpt["loss_state"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        restore_rng_state(ckpt["rng"], train_gen)  # last: model building above drew from the RNGs

    def save_checkpoints(state: TrainState, improved: bool) -> None:
        if not here.is_main:  # one writer; every rank holds the same weights and state
            return
        meta = {"train_state": {k: v for k, v in vars(state).items() if k != "best_weights"}, "config": cfg.to_dict()}
        if improved:  # before last.pt: if killed in between, the resumed run redoes this epoch and best.pt
            # with --ema the best may be the EMA weights: the copy the state kept
            save_checkpoint(out / BEST, {"model": state.best_weights if ema is not None else model.state_dict(), **meta})
        recipe = {**({"scheduler": scheduler.state_dict()} if scheduler is not None else {}),
                  **({"ema": ema.state_dict()} if ema is not None else {})}
        save_checkpoint(out / LAST, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "loss_state": loss_fn.state_dict(), "epochs": run_log.epochs,
                                     "world_sizes": world_sizes, "rng": rng_state(train_gen), **recipe, **meta})

    try:
        log.info(f"{cfg.dataset} ({len(loaders['train'].dataset)} train / {len(loaders['val'].dataset)} val / "
                 f"{len(loaders['test'].dataset)} test), loss {cfg.loss}, model {cfg.model}, device {device}, "
                 f"{epochs} epochs, batch {cfg.bsize}{_per_process(here, cfg.bsize)}, lr {cfg.lr:g} -> {out} "
                 f"(every setting: config.json)")
        if ckpt is not None:
            log.info(f"resuming {out} after epoch {state.epoch}")
        try:
            state = fit(model, loss_fn, optimizer, loaders, device, epochs, cfg.patience, cfg.threshold, run_log,
                        state=state, on_epoch_end=save_checkpoints, options=options,
                        after_step=after_step if scheduler is not None or ema is not None else None,
                        ema_model=ema.module if ema is not None else None, train_model=train_model,
                        stop_drop=cfg.stop_drop)
        except BaseException as err:  # a NaN, Ctrl-C / SIGTERM, bad data, a full disk, a bug: never left "running"
            # Nothing of the unfinished epoch is kept: last.pt and best.pt stay as the last completed epoch left them.
            status, reason, raised = _why_stopped(err, device)
            last = str(out / LAST) if state.epoch else None
            run_log.write_results(state.summary(), status, reason=reason, last_completed_epoch=state.epoch,
                                  last_checkpoint=last)
            if here.is_main and status != "failed":  # rank 0 says it
                # A diverged run resumed would replay the same steps: the way on is a new run (lower --lr).
                # under torchrun: the same torchrun command with main.py --resume
                resume = f"`{'torchrun ... ' if here.distributed else 'python '}main.py --resume {cfg.out}`"
                stopped = f"stopped during epoch {state.epoch + 1}" + (f" by {raised.name}" if status == "interrupted"
                                                                         and isinstance(raised, stop.Interrupted) else "")
                if state.epoch == 0:
                    then = "" if status == "diverged" else f"; {resume} starts it again"
                    log.error(f"{stopped}: no epoch completed, no checkpoint written; results.json is marked "
                              f"{status}{then}")
                else:
                    then = "" if status == "diverged" else f"; {resume} continues from there"
                    log.error(f"{stopped}: {last} and results.json (marked {status}) hold epoch {state.epoch}{then}")
            if raised is err:
                raise
            raise raised from err
        run_log.write_results(state.summary(), "completed")
        log.info(f"best epoch {state.best_epoch}: val mAP {state.best_val_map:.2f}, "
                 f"test mAP {state.best_test_map:.2f} -> {out / 'results.json'}")
        if cfg.report_test_oracle:
            oracle = test_oracle(run_log.epochs)
            log.info(f"chosen on the test set, as PU-MLC's code reports (not a result): test mAP {oracle['map']:.2f} "
                     f"(epoch {oracle['epoch']}, {oracle['weights']} weights)")
        return state
    finally:
        run_log.close()


def _why_stopped(err: BaseException, device: torch.device) -> tuple[str, str, BaseException]:
    """(status, reason, the exception to stop with) of a run that `err` stopped before its end."""
    own = err if isinstance(err, UserError) else _deterministic_error(err, device) or err
    message = str(own) if isinstance(own, UserError) else f"{type(own).__name__}: {own}"
    if (peer := processes.peer_failure(own=message)) is not None:  # torchrun: another process failed first
        return "failed", peer, ReportedElsewhere(peer)
    if isinstance(err, NonFiniteLoss):
        return "diverged", message, err
    # a signal, or an error a signal caused (under torchrun, a process it stopped left a collective)
    interrupt = err if isinstance(err, KeyboardInterrupt) else stop.interrupted_by()
    if interrupt is not None:
        reason = interrupt.reason if isinstance(interrupt, stop.Interrupted) else "interrupted by the user (Ctrl-C)"
        return "interrupted", reason, interrupt
    return "failed", message, own


def _deterministic_error(err: Exception, device: torch.device) -> UserError | None:
    """--deterministic met an op without a deterministic kernel: one line naming the op, not a traceback."""
    if not isinstance(err, RuntimeError) or "does not have a deterministic implementation" not in str(err):
        return None
    op = str(err).splitlines()[0].split(" does not have")[0]  # PyTorch names the op in its first line
    return UserError(f"--deterministic: {op} has no deterministic implementation on {device}; "
                     f"drop --deterministic or use another --model")


def _world_sizes(out: Path, ckpt: dict | None, first_epoch: int, size: int, bsize: int) -> list[dict]:
    """The processes each stretch of the run's epochs trained on (a run resumed on another count starts a new one)."""
    if ckpt is None:
        earlier = []
    elif "world_sizes" in ckpt:
        earlier = ckpt["world_sizes"]
    else:  # a checkpoint older than this record: its results.json said the count when it was not 1
        before = run_results(out).get("world_size", 1)
        earlier = [{"from_epoch": 1, "world_size": before, "bsize_per_process": bsize // before}]
    if earlier and earlier[-1]["world_size"] == size:
        return earlier
    return [*earlier, {"from_epoch": first_epoch, "world_size": size, "bsize_per_process": bsize // size}]


def _per_process(here: distributed.World, bsize: int) -> str:
    return f" ({bsize // here.size} per process x {here.size})" if here.distributed else ""


def restart_if_unstarted(cfg: Config, out: Path) -> Config:
    """See `_restart_if_unstarted`; under torchrun rank 0 cleans the folder, the others then find it clean."""
    with distributed.main_first():
        return _restart_if_unstarted(cfg, out)


def _restart_if_unstarted(cfg: Config, out: Path) -> Config:
    """Under --resume, a run or phase killed before its first checkpoint holds only the files its run
    log writes, and at most the record of epoch 1 (logged just before its checkpoint is written): no
    training to lose, so they are removed and the config comes back with resume off, to start
    afresh. A folder holding anything else (more epochs logged, a completed run, files of the
    user's) is left as it is, and the resume refused."""
    if not cfg.resume or any(out.rglob("*.pt")):
        return cfg
    if out.exists():
        files = [path for path in out.rglob("*") if not path.is_dir()]
        logged = [path for path in files if path.name == "metrics.jsonl" and path.stat().st_size > 0]
        if logged and (len(logged[0].read_text().splitlines()) > 1 or run_status(out) == "completed"):
            raise UserError(f"--resume {out}: {logged[0]} records finished epochs but no checkpoint is left "
                            f"to resume from (were the .pt files deleted?); start a new run")
        if foreign := [str(path.relative_to(out)) for path in files if path.name not in RUN_FILES]:
            raise UserError(f"--resume {out}: no epoch completed, and it holds files spml did not write "
                            f"({', '.join(sorted(foreign))}); move them away and resume again")
        log.info(f"{out}: killed before its first checkpoint was written; starting it again")
        shutil.rmtree(out)  # only run-log files, checked above
    return dataclasses.replace(cfg, resume=False)


def resumed_phase(cfg: Config, out: Path, loss_fn: SPMLLoss | None = None) -> tuple[Config, TrainState | None]:
    """How a --resume goes on with the phase whose folder is `out`: (config to train it with, final state).

    A completed phase is not trained again: its final state comes back (best weights
    from best.pt) and `loss_fn` gets the state it ended with (ROLE's label estimates).
    A phase holding a checkpoint is resumed from it; one without is started afresh
    (`restart_if_unstarted`).
    """
    if cfg.resume and run_status(out) == "completed" and (out / LAST).is_file():
        ckpt = load_checkpoint(out / LAST)
        if loss_fn is not None:
            loss_fn.load_state_dict(ckpt["loss_state"])
        return cfg, _train_state(out, ckpt)
    return restart_if_unstarted(cfg, out), None
