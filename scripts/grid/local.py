"""The runs of a grid on this machine: N at a time on the CPU (--jobs) or one per GPU (--gpus).

Each run is a main.py process in its own session, so that the grid alone decides when it
stops: Ctrl-C (or SIGTERM) to the grid is passed on to every running main.py, which marks
its results.json interrupted and exits; the grid then exits 130 (143). A second Ctrl-C, or
GRACE_S without an exit, kills them (they resume from their last checkpoint all the same).
The next run starts as soon as a slot frees up; a run that fails never stops the others.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from scripts.grid.spec import Run
from scripts.grid.state import begin_attempt, end_attempt, log_path, run_state

log = logging.getLogger("grid")

POLL_S = 0.2
GRACE_S = 120.0  # for a stopped main.py to write its results.json and exit


@dataclass(frozen=True)
class Attempt:
    """One go at a run: main.py started afresh or resumed."""

    run: Run
    how: str  # "start" or "resume"
    command: list[str]


class _Signals:
    """SIGINT / SIGTERM are noted, and acted on by the loop: a handler that raised could strike
    between starting a process and keeping its handle, and leave it running unseen."""

    def __enter__(self) -> "_Signals":
        self.received: list[int] = []
        self._old = {sig: signal.signal(sig, lambda signum, frame: self.received.append(signum))
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _threads(slots: int) -> str:
    """Each run's share of the CPU cores, so that N runs do not fight over them (OMP_NUM_THREADS)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // slots))


def _start(out: Path, attempt: Attempt, cuda: str | None, threads: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": threads, **({"CUDA_VISIBLE_DEVICES": cuda} if cuda is not None else {})}
    begin_attempt(out, attempt.run.name, attempt.how, attempt.command, **({"gpu": cuda} if cuda is not None else {}))
    with open(log_path(out, attempt.run.name), "a") as console:
        proc = subprocess.Popen(attempt.command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    where = f" on GPU {cuda}" if cuda is not None else ""
    log.info(f"{attempt.run.name}: {'started' if attempt.how == 'start' else 'resumed'}{where} "
             f"(log: {log_path(out, attempt.run.name)})")
    return proc


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """The run and its data-loading workers (its process group)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def run_local(out: Path, attempts: list[Attempt], slots: list[str | None]) -> int | None:
    """Run the `attempts`, one per slot at a time (a slot is a CUDA_VISIBLE_DEVICES value, or None: the CPU).
    Returns None once every attempt has ended, or the exit code of the signal that stopped the grid."""
    queue, free = deque(attempts), list(range(len(slots)))
    running: dict[int, tuple[Attempt, subprocess.Popen]] = {}
    threads = _threads(len(slots))
    done = 0

    def finished(slot: int) -> None:
        nonlocal done
        attempt, proc = running.pop(slot)
        free.append(slot)
        free.sort()
        end_attempt(out, attempt.run.name, proc.returncode)
        state = run_state(out, attempt.run.name)
        done += 1
        result = f", test mAP {state['test_map']:.2f}" if state["test_map"] is not None else ""
        detail = f": {state['reason']}" if state["state"] != "completed" and state["reason"] else ""
        log.info(f"[{done}/{len(attempts)}] {attempt.run.name}: {state['state']}{result}{detail}")

    def reap() -> None:
        time.sleep(POLL_S)
        for slot in [slot for slot, (_, proc) in running.items() if proc.poll() is not None]:
            finished(slot)

    with _Signals() as signals:
        while (queue or running) and not signals.received:
            while queue and free:
                slot = free.pop(0)
                attempt = queue.popleft()
                running[slot] = (attempt, _start(out, attempt, slots[slot], threads))
            reap()
        if not signals.received:
            return None
        signum = signals.received[0]
        log.warning(f"{signal.Signals(signum).name}: stopping {len(running)} running run(s) (again: kill them now)")
        for _, proc in running.values():
            _signal_group(proc, signum)
        deadline, killed = time.monotonic() + GRACE_S, False
        while running:
            if not killed and (len(signals.received) > 1 or time.monotonic() > deadline):
                for _, proc in running.values():
                    _signal_group(proc, signal.SIGKILL)
                killed = True
            reap()
        return 128 + signum
