"""The grid's command line: check everything, then run the runs left to do here or submit them to Slurm.

    python -m scripts.grid --out runs/grid --losses an EM --seeds 0 1 2 --jobs 2 -- --epochs 5
    python -m scripts.grid --out runs/grid --losses an EM --gpus 0,1,2,3 -- -d coco
    python -m scripts.grid --out runs/grid --file grid.toml --slurm --partition gpu --gres gpu:1 --time 12:00:00
    python -m scripts.grid --out runs/grid --status

Exit code: 0 when every run completed (or diverged: a result), 1 when some failed or are
left to resume, 2 on bad input (nothing started), 130 / 143 when stopped by Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from errors import UserError
from losses import LOSSES
from preflight import writable_folder
from presets import REPO_ROOT
from scripts.grid.local import Attempt, run_local
from scripts.grid.slurm import SlurmOptions, job_alive, require_sbatch, run_task, script, submit, wait
from scripts.grid.spec import (
    Run,
    Spec,
    check_flags,
    check_folder,
    read_grid_file,
    read_record,
    run_configs,
    write_record,
)
from scripts.grid.state import DONE, action, command, run_state

log = logging.getLogger("grid")

SLURM_ONLY = ("partition", "time", "gres", "cpus_per_task", "sbatch", "wait")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (main)
        raise UserError(message)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m scripts.grid", description="Run main.py over a grid of datasets x losses x seeds, "
                "here or as a Slurm job array; resumable. main.py flags for every run go after --.")
    p.add_argument("--out", type=Path, required=True, help="the grid folder: one folder per run, grid.json, logs/")
    grid = p.add_argument_group("the grid (or --file)")
    grid.add_argument("--losses", nargs="+", metavar="LOSS", help="losses (main.py -l; `python main.py -h` lists them)")
    grid.add_argument("--datasets", nargs="+", metavar="DATASET", help="datasets (main.py -d)")
    grid.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (main.py -s; default 0)")
    grid.add_argument("--file", type=Path, help="the grid from a TOML or JSON file: datasets, losses, seeds, flags")
    where = p.add_argument_group("where the runs go")
    where.add_argument("--jobs", type=_positive,
                       help="runs at once: here on the CPU (default 1), or under --slurm the array's throttle (%%N)")
    where.add_argument("--gpus", help="GPU indices, e.g. 0,1,2,3: one run per GPU at a time (CUDA_VISIBLE_DEVICES)")
    where.add_argument("--slurm", action="store_true", help="submit the runs as one Slurm job array (sbatch)")
    slurm = p.add_argument_group("Slurm (with --slurm)")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", help="each run's time limit, e.g. 12:00:00")
    slurm.add_argument("--gres", help="e.g. gpu:1 (the runs then train on the GPU Slurm gives them)")
    slurm.add_argument("--cpus-per-task", type=_positive)
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="any other sbatch option, e.g. --sbatch=--account=abc (repeatable)")
    slurm.add_argument("--wait", action="store_true", help="wait for the job array to end, then report")
    p.add_argument("--dry-run", action="store_true", help="print what would run (the sbatch script), start nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the runs that failed again (resumed if they can be)")
    p.add_argument("--resume", action="store_true", help="go on with the grid --out holds, as it was launched")
    p.add_argument("--status", action="store_true", help="print where each run of the grid in --out stands")
    p.add_argument("--run-task", type=int, help=argparse.SUPPRESS)  # one Slurm array task (slurm.py)
    p.add_argument("--task-gpu", default="cpu", help=argparse.SUPPRESS)
    return p


def _spec(args: argparse.Namespace, flags: list[str], out: Path) -> Spec:
    if args.resume:
        record = read_record(out)
        if record is None:
            raise UserError(f"--resume: {out} holds no grid (no grid.json); launch one with "
                            f"--losses/--datasets/--seeds")
        given = [f"--{key}" for key in ("losses", "datasets", "seeds", "file") if getattr(args, key)]
        if given or flags:
            shown = ", ".join(given + (["main.py flags after --"] if flags else []))
            raise UserError(f"--resume goes on with the grid in {out} as it was launched; drop {shown}")
        return Spec.from_dict(record["spec"])
    values = read_grid_file(args.file) if args.file else {}
    for key in ("datasets", "losses", "seeds"):
        if getattr(args, key) and key in values:
            raise UserError(f"--{key} is given on the command line and in --file {args.file}: keep one")
        values.setdefault(key, getattr(args, key))
    if unknown := [loss for loss in values["losses"] or [] if loss not in LOSSES]:
        where = f"in --file {args.file}" if args.file and not args.losses else "given to --losses"
        raise UserError(f"unknown loss {unknown[0]!r} {where}; choose from {', '.join(LOSSES)}")
    for key in ("datasets", "losses", "seeds"):
        if values[key] and len(set(values[key])) < len(values[key]):
            raise UserError(f"--{key} {' '.join(map(str, values[key]))}: a value given twice")
    axis = lambda key: tuple(values[key]) if values[key] else None  # noqa: E731
    return Spec(axis("datasets"), axis("losses"), axis("seeds") or (0,), tuple([*values.get("flags", []), *flags]))


def gpu_slots(text: str) -> list[str]:
    """--gpus 0,1 -> the CUDA_VISIBLE_DEVICES value of each slot; a GPU that does not exist is refused."""
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--gpus {text}: give GPU indices separated by commas, e.g. --gpus 0,1,2,3") from None
    if min(ids) < 0 or len(set(ids)) < len(ids):
        raise UserError(f"--gpus {text}: each GPU index once, none negative")
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UserError(f"--gpus {text}: torch sees no CUDA GPU on this machine; run on the CPU with --jobs N")
    if missing := [i for i in ids if i >= count]:
        raise UserError(f"--gpus {text}: there is no GPU {missing[0]}; {count} visible (0-{count - 1})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # indices count within what this process may see
    names = [name.strip() for name in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [names[i] for i in ids]


def _run_gpu(args: argparse.Namespace, spec: Spec) -> str:
    """The -g of every run: the one slot's GPU, the user's -g, Slurm's GPU, or the CPU."""
    if args.gpus:
        return "0"  # the one GPU CUDA_VISIBLE_DEVICES leaves it
    from cli import _given_flags
    from flags import build_parser as main_parser

    if "gpu" in _given_flags(list(spec.flags)):
        return main_parser().parse_args(list(spec.flags)).gpu
    return "0" if args.slurm and "gpu" in (args.gres or "") else "cpu"


@contextlib.contextmanager
def _lock(out: Path):
    """One launcher at a time per grid folder (the lock goes with the process, even when it is killed)."""
    with open(out / "grid.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{out} is being run by another grid launcher (pid {f.read().strip() or '?'}); wait for "
                            f"it to end, or stop it") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield


def _live_job(record: dict | None) -> str | None:
    """The grid's last Slurm job array (kept in grid.json until another is submitted), if still queued or running."""
    job = ((record or {}).get("slurm") or {}).get("job")
    return job if job and shutil.which("squeue") and job_alive(job) else None


def _launcher_alive(out: Path, record: dict | None) -> bool:
    """Whether the runs of the grid in `out` may be running now: a launcher holds its lock, or its Slurm job lives."""
    if _live_job(record):
        return True
    try:
        with _lock(out):
            return False
    except UserError:
        return True


def _slots(args: argparse.Namespace) -> list[str | None]:
    """Where the runs go here: one slot per GPU of --gpus (its CUDA_VISIBLE_DEVICES), or --jobs CPU slots."""
    if args.gpus and (args.slurm or args.jobs):
        raise UserError("--gpus runs one run per GPU here: drop --jobs" if args.jobs else
                        "--gpus is for runs here; under --slurm ask for GPUs with --gres gpu:1")
    if not args.slurm and (given := [key for key in SLURM_ONLY if getattr(args, key)]):
        raise UserError(f"--{given[0].replace('_', '-')} is a Slurm option: add --slurm, or drop it")
    if args.slurm and not args.dry_run:
        require_sbatch()
    return gpu_slots(args.gpus) if args.gpus else [None] * (args.jobs or 1)


def _last_job_array(out: Path) -> dict | None:
    """The record of the grid's last Slurm job array; a launch is refused while it runs."""
    record = read_record(out)
    if job := _live_job(record):
        raise UserError(f"Slurm job {job} of the grid in {out} is still queued or running: wait for it to end "
                        f"(--status), or scancel {job}")
    return (record or {}).get("slurm")


def _plan(out: Path, runs: list[Run], states: dict[str, dict], retry_failed: bool, gpu: str) -> list[Attempt]:
    todo = []
    for run in runs:
        state = states[run.name]
        how = action(out, run.name, state["state"], retry_failed)
        if how is not None:
            todo.append(Attempt(run, how, command(sys.executable, REPO_ROOT / "main.py", out, run.argv, run.name, how,
                                                  gpu)))
        elif state["state"] == "failed":
            log.info(f"{run.name}: failed earlier ({state['reason']}); --retry-failed runs it again")
        else:
            log.info(f"{run.name}: already {state['state']}, skipped")
    return todo


def launch(args: argparse.Namespace, flags: list[str]) -> int:
    out = args.out.absolute()
    spec = _spec(args, flags, out)
    slots = _slots(args)
    check_flags(spec, gpus=bool(args.gpus))
    gpu = _run_gpu(args, spec)
    runs = spec.runs()
    configs = run_configs(runs, gpu)
    check_folder(out, spec, configs)
    writable_folder("--out", out)
    slurm = _last_job_array(out)
    states = {run.name: run_state(out, run.name) for run in runs}
    todo = _plan(out, runs, states, args.retry_failed, gpu)
    indices = [attempt.run.index for attempt in todo]
    batch = script(out, indices, _slurm_options(args), gpu, args.retry_failed) if args.slurm else None
    if args.dry_run:
        sys.stdout.write(batch if args.slurm and todo else "".join(" ".join(a.command) + "\n" for a in todo))
        log.info(f"--dry-run: {len(todo)} of {len(runs)} runs to do; nothing started")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    stopped = None
    with _lock(out):
        write_record(out, spec, runs, configs, states, slurm)
        if todo and args.slurm:
            slurm = {"job": submit(out, batch), "runs": indices, "submitted": time.time()}
            write_record(out, spec, runs, configs, states, slurm)
            log.info(f"submitted Slurm job array {slurm['job']}: {len(todo)} run(s) (logs in {out / 'logs'})")
            if not args.wait:
                log.info(f"follow it with `python -m scripts.grid --out {out} --status`; launch the same command "
                         f"again once it ends to resume what did not complete")
                return 0
            seen: set[str] = set()
            try:
                wait(slurm["job"], lambda: _announce(out, todo, seen))
            except KeyboardInterrupt:
                log.warning(f"stopped waiting; Slurm job array {slurm['job']} goes on (scancel {slurm['job']} "
                            f"stops it; --status follows it)")
                return 130
        elif todo:
            log.info(f"grid {out}: {len(todo)} of {len(runs)} runs to do, {len(slots)} at a time")
            stopped = run_local(out, todo, slots)
        states = {run.name: run_state(out, run.name) for run in runs}
        write_record(out, spec, runs, configs, states, slurm)
    return _report(out, states, stopped)


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    return SlurmOptions(args.partition, args.time, args.gres, args.cpus_per_task, args.jobs, tuple(args.sbatch))


def _announce(out: Path, todo: list[Attempt], seen: set[str]) -> None:
    """Under --wait: a line for each run of the job array that has ended since the last look."""
    for attempt in todo:
        name = attempt.run.name
        state = run_state(out, name, launcher_alive=True)
        if name not in seen and state["state"] not in ("running", "pending"):
            seen.add(name)
            log.info(f"[{len(seen)}/{len(todo)}] {name}: {state['state']}"
                     + (f", test mAP {state['test_map']:.2f}" if state["test_map"] is not None else ""))


def _report(out: Path, states: dict[str, dict], stopped: int | None) -> int:
    counts = Counter(state["state"] for state in states.values())
    shown = [f"{counts[k]} {k}" for k in ("completed", "diverged", "failed", "interrupted", "pending")
             if counts[k] or k in ("completed", "failed", "interrupted")]
    log.info(f"grid {out}: {len(states)} runs: {', '.join(shown)}")
    for name, state in states.items():
        if state["state"] in ("failed", "interrupted", "diverged"):
            log.warning(f"  {state['state']} {name}: {state['reason']}")
    if counts["failed"]:
        log.warning("fix what failed, then launch the same command with --retry-failed (completed runs are kept)")
    if counts["interrupted"] or counts["pending"]:
        log.warning("launch the same command again to resume the runs left (completed runs are kept)")
    if counts["completed"]:
        from scripts import summarize

        summarize.main([str(out)])
    if stopped is not None:
        return stopped
    return 0 if all(state["state"] in DONE for state in states.values()) else 1


def show_status(out: Path) -> int:
    out = out.absolute()
    record = read_record(out)
    if record is None:
        raise UserError(f"--status: {out} holds no grid (no grid.json)")
    alive = _launcher_alive(out, record)
    lines = []
    for run in record["runs"]:
        state = run_state(out, run["name"], launcher_alive=alive)
        result = f"{state['test_map']:.2f}" if state["test_map"] is not None else "-"
        lines.append([run["name"], state["state"], str(state["attempts"]), result, state["reason"] or ""])
    header = ["run", "state", "attempts", "test mAP", "reason"]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    sys.stdout.write("".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n"
                             for row in [header, *lines]))
    if job := (record.get("slurm") or {}).get("job"):
        log.info(f"Slurm job array {job}: {'queued or running' if alive else 'ended'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    try:
        args, extra = build_parser().parse_known_args(own)
        if extra:
            raise UserError(f"unrecognized arguments {' '.join(extra)}: main.py's flags go after --")
        if args.run_task is not None:
            return run_task(args.out.absolute(), args.run_task, args.task_gpu, args.retry_failed)
        if args.status:
            return show_status(args.out)
        return launch(args, flags)
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    except SystemExit as exit_:  # -h
        return int(exit_.code or 0)
    except KeyboardInterrupt:  # before any run started (a run here is stopped by run_local)
        return 130
