"""Where each run of a grid stands, and what a launch does with it.

The truth is the run's own results.json (`status`: completed, diverged, failed, interrupted,
or running) and the record of its last attempt, `logs/<name>.attempt.json`, which the
launcher (or, under Slurm, the array task) writes when it starts main.py and when main.py
exits, beside main.py's console output in `logs/<name>.log`:

    completed    results.json says so (a --search run: search.json, and main.py exited 0)
                                                                  -> skipped
    diverged     the loss went non-finite: a result, not an error -> skipped
    failed       results.json says so, or main.py exited with an error
                 before it could write one (a bad checkpoint, a missing file)
                                                                  -> re-run only with --retry-failed
    interrupted  Ctrl-C or SIGTERM (Slurm's time limit), or "running" with no process
                 left (killed hard: SIGKILL, the OOM killer, a lost node)
                                                                  -> resumed (main.py --resume)
    pending      never started                                    -> started
    running      (for --status) its attempt has not ended and what launched it, a grid
                 process or a Slurm job array, still runs

A run is resumed from its folder whenever it holds main.py's config.json (main.py --resume
goes on from the last checkpoint, or starts again a run killed in its first epoch), and
started afresh otherwise.
"""
from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

from fileio import write_json_atomic
from instrumentation import run_results

# main.py's exit codes of a run stopped from outside: resumable, not failed
STOPPED = {130: "interrupted (Ctrl-C)", 143: "stopped by SIGTERM (e.g. Slurm's time limit or scancel)",
           137: "killed (SIGKILL: killed hard, or out of memory)"}
DONE = ("completed", "diverged")


def log_path(out: Path, name: str) -> Path:
    return out / "logs" / f"{name}.log"


def attempt_path(out: Path, name: str) -> Path:
    return out / "logs" / f"{name}.attempt.json"


def read_attempt(out: Path, name: str) -> dict:
    try:
        return json.loads(attempt_path(out, name).read_text())
    except (OSError, ValueError):
        return {}


def begin_attempt(out: Path, name: str, how: str, command: list[str], **where) -> int:
    """Record (and mark in the run's log) that an attempt starts; returns its number."""
    number = read_attempt(out, name).get("attempt", 0) + 1
    (out / "logs").mkdir(parents=True, exist_ok=True)
    with open(log_path(out, name), "a") as f:
        f.write(f"=== attempt {number} ({how}) on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(command)}\n")
    write_json_atomic(attempt_path(out, name), {"attempt": number, "how": how, "host": socket.gethostname(),
                                                "started": time.time(), **where})
    return number


def end_attempt(out: Path, name: str, exit_code: int) -> None:
    # a process killed by signal N: Popen says -N, a shell 128 + N
    code = 128 - exit_code if exit_code < 0 else exit_code
    write_json_atomic(attempt_path(out, name), {**read_attempt(out, name), "ended": time.time(), "exit_code": code})


def _last_error(out: Path, name: str) -> str | None:
    """main.py's one-line error in the run's log since its last attempt began (or a traceback's last line)."""
    try:
        lines = log_path(out, name).read_text(errors="replace").splitlines()
    except OSError:
        return None
    since = max((i for i, line in enumerate(lines) if line.startswith("=== attempt ")), default=0)
    lines = lines[since:]
    errors = [line for line in lines if line.startswith("error: ")]
    if not errors and (tracebacks := [i for i, line in enumerate(lines) if line.startswith("Traceback ")]):
        errors = [line for line in lines[tracebacks[-1]:] if line and not line[0].isspace()]
    return errors[-1] if errors else None


def _stopped(code: int) -> str:
    if code in STOPPED:
        return STOPPED[code]
    try:
        return f"killed by {signal.Signals(code - 128).name}"
    except ValueError:
        return f"stopped with exit code {code}"


def run_state(out: Path, name: str, launcher_alive: bool = False) -> dict:
    """{"state", "reason", "test_map", "attempts"} of the run `name` of the grid in `out`; "running" when its
    attempt has not ended and what launched it (`launcher_alive`: a grid process, a Slurm job) still runs."""
    folder = out / name
    results = run_results(folder)
    status, reason = results.get("status"), results.get("reason")
    attempt = read_attempt(out, name)
    code = attempt.get("exit_code")  # None while running, or when the launcher itself was killed
    if launcher_alive and attempt and "ended" not in attempt:
        return {"state": "running", "reason": None, "test_map": None, "attempts": attempt["attempt"]}
    stopped = code is not None and (code in STOPPED or 128 < code < 160)  # from outside: resumable
    epochs = len(results.get("epochs") or [])
    # a --search run writes no results.json of its own, only search.json
    if status == "completed" or (code == 0 and status is None and (folder / "search.json").is_file()):
        state = "completed"
    elif status in ("diverged", "failed"):
        state = status
    elif code not in (None, 0) and not stopped:
        state = "failed"
        reason = _last_error(out, name) or f"main.py exited with code {code} (see {log_path(out, name)})"
    elif status == "interrupted":
        state = "interrupted"
    elif stopped:
        state, reason = "interrupted", f"{_stopped(code)} after {epochs} epoch(s)"
    elif (folder / "config.json").is_file():
        state, reason = "interrupted", f"stopped without a word after {epochs} epoch(s) (killed hard?)"
    else:
        state = "pending"
    return {"state": state, "reason": reason, "test_map": results.get("test_map") if state == "completed" else None,
            "attempts": attempt.get("attempt", 0)}


def action(out: Path, name: str, state: str, retry_failed: bool) -> str | None:
    """What a launch does with a run: "start", "resume", or None (nothing to do)."""
    if state in DONE or (state == "failed" and not retry_failed):
        return None
    return "resume" if (out / name / "config.json").is_file() else "start"


def command(python: str, main_py: Path, out: Path, argv: tuple[str, ...], name: str, how: str, gpu: str) -> list[str]:
    """The main.py command line of one attempt."""
    if how == "resume":
        return [python, str(main_py), "--resume", str(out / name), "-g", gpu]
    return [python, str(main_py), *argv, "-g", gpu, "--out", str(out / name)]
