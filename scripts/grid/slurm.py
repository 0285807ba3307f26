"""The runs of a grid as one Slurm job array: one array task per run left to do.

Plain `sbatch`, not submitit: a job array of command lines is what Slurm does natively,
the script is a file (`<grid>/grid.sbatch`, printed by --dry-run) that a user can read,
edit and submit by hand, and nothing is pickled or added to the dependencies. Each array
task runs `python -m scripts.grid --run-task INDEX`, which reads grid.json, starts or resumes
run INDEX (or does nothing if it completed since), waits for main.py and records how it
ended, as the local launcher does. The task ignores SIGTERM itself and waits: Slurm signals
every process of the job at its time limit or on scancel, and main.py's own answer (marking
its results.json) is what matters; the run is then resumed by the next launch.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from errors import UserError
from presets import REPO_ROOT
from scripts.grid.spec import read_record
from scripts.grid.state import action, begin_attempt, command, end_attempt, log_path, run_state

log = logging.getLogger("grid")

POLL_S = 2.0


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = None
    throttle: int | None = None  # the array's %N: at most N runs at once
    extra: tuple[str, ...] = ()  # more sbatch options, as given (--sbatch=--account=abc)


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: no sbatch on this machine (Slurm's client commands are not installed or not on "
                        "PATH); launch from a Slurm login node, or run here with --jobs N / --gpus LIST")


def array_spec(indices: list[int], throttle: int | None) -> str:
    """0-3,5,7-8%2: the indices as ranges, and the throttle."""
    ranges: list[list[int]] = []
    for i in sorted(indices):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    return text + (f"%{throttle}" if throttle else "")


def script(out: Path, indices: list[int], options: SlurmOptions, gpu: str, retry_failed: bool) -> str:
    sbatch = [f"--job-name=spml-{out.name}", f"--array={array_spec(indices, options.throttle)}",
              f"--output={out / 'logs'}/slurm-%A_%a.out"]
    for flag, value in (("partition", options.partition), ("time", options.time), ("gres", options.gres),
                        ("cpus-per-task", options.cpus_per_task)):
        if value is not None:
            sbatch.append(f"--{flag}={value}")
    task = [sys.executable, "-m", "scripts.grid", "--out", str(out), "--run-task", "$SLURM_ARRAY_TASK_ID",
            "--task-gpu", gpu, *(["--retry-failed"] if retry_failed else [])]
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {shlex.quote(option)}" for option in [*sbatch, *options.extra]),
        f"# One array task per run of the grid in {out}: INDEX is the run's place in its grid.json.",
        f"cd {shlex.quote(os.getcwd())}  # main.py's relative paths are relative to where the grid was launched",
        f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        # torch would take every core of the node: the run's threads are the cores Slurm gave it
        *([f"export OMP_NUM_THREADS={options.cpus_per_task}"] if options.cpus_per_task else []),
        "exec " + " ".join(shlex.quote(arg) if not arg.startswith("$") else f'"{arg}"' for arg in task),
    ]) + "\n"


def submit(out: Path, text: str) -> str:
    """sbatch the script (kept as <grid>/grid.sbatch); returns the job id."""
    path = out / "grid.sbatch"
    path.write_text(text)
    (out / "logs").mkdir(exist_ok=True)  # Slurm opens each task's --output there before the task starts
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise UserError(f"sbatch refused the grid's job array ({reason}); fix the Slurm options and launch again")
    return done.stdout.strip().split(";")[0]


def job_alive(job: str) -> bool:
    """Whether any task of the array job is still pending or running."""
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True)
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # ended long enough ago that slurmctld forgot it
            return False
        raise UserError(f"squeue -j {job} failed: {done.stderr.strip() or done.returncode}")
    return bool(done.stdout.strip())


def wait(job: str, on_poll) -> None:
    """Until the array job has left the queue, calling `on_poll()` every POLL_S."""
    while job_alive(job):
        on_poll()
        time.sleep(POLL_S)
    on_poll()


def run_task(out: Path, index: int, gpu: str, retry_failed: bool) -> int:
    """One array task: run INDEX of the grid, as the local launcher would run it."""
    record = read_record(out)
    if record is None or not 0 <= index < len(record["runs"]):
        raise UserError(f"--run-task {index}: {out} holds no grid run of that index")
    run = record["runs"][index]
    name = run["name"]
    state = run_state(out, name)["state"]
    how = action(out, name, state, retry_failed)
    if how is None:
        log.info(f"{name}: {state}, nothing to do")
        return 0
    argv = command(sys.executable, REPO_ROOT / "main.py", out, tuple(run["argv"]), name, how, gpu)
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', index)}"
    begin_attempt(out, name, how, argv, slurm_job=job)
    log.info(f"{name}: {how} (log: {log_path(out, name)})")
    # main.py answers Slurm's signals; this task outlives it to record how it ended (a handler, not SIG_IGN,
    # which main.py would inherit)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    with open(log_path(out, name), "a") as console:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT).returncode
    end_attempt(out, name, code)
    log.info(f"{name}: {run_state(out, name)['state']}")
    return 128 - code if code < 0 else code
