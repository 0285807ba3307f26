"""How a run stops before its end, the same way in one process and under torchrun.

SIGTERM is what Slurm (at the time limit, or earlier when asked with `--signal`), Kubernetes
and most batch systems send to stop a job: here it stops a run as Ctrl-C does (`Interrupted`):
results.json is marked interrupted and names the last checkpoint, and the exit code is 128 +
the signal (130 for Ctrl-C, 143 for SIGTERM). A signal that arrives while the process is
already handling an error is recorded instead of raised, so that handling is not cut short
(`interrupted_by` tells it); the training loop raises it at its next step (`raise_pending`).

Under torchrun one line says why a run stopped, printed by the process that met the error, or
by process 0 when every process met it (`exit_code`); the processes it stopped say nothing
(training/processes.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

from errors import ReportedElsewhere, UserError
from training import processes

log = logging.getLogger("spml")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: Ctrl-C (SIGINT) or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name

    @property
    def reason(self) -> str:
        return "interrupted by the user (Ctrl-C)" if self.signum == signal.SIGINT else \
            f"stopped by {self.name} (a batch system's stop, or kill)"


_received: list[int] = []  # the signals of this run, in order
_owner: list[int] = []  # the process that set the handlers (loader workers forked from it inherit them)


def _on_signal(signum: int, frame) -> None:
    if os.getpid() not in _owner:  # a loader worker: it stops as PyTorch's workers do on Ctrl-C
        raise KeyboardInterrupt
    _received.append(signum)
    if sys.exc_info()[1] is not None:  # already stopping on an error: let its handling finish
        return
    if (peer := processes.peer_failure()) is not None:  # torchrun's agent stops us: another process failed
        raise ReportedElsewhere(peer)
    raise Interrupted(signum)


def interrupted_by() -> Interrupted | None:
    """The first signal this run received, as the interruption it stands for; None without one."""
    return Interrupted(_received[0]) if _received else None


def raise_pending() -> None:
    """Raise a signal that arrived while an error was being handled (and that handling went on)."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the body, SIGINT and SIGTERM raise `Interrupted`; the handlers before are restored after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    _received.clear()
    _owner[:] = [os.getpid()]
    before = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def exit_code(err: UserError | KeyboardInterrupt) -> int:
    """The exit code of a run that `err` ended, once its one line, if any, is printed: by the process
    that met the error (process 0 for an error every process met), never by the processes it stopped."""
    if isinstance(err, KeyboardInterrupt):  # results.json already says interrupted
        return err.exit_code if isinstance(err, Interrupted) else 128 + signal.SIGINT
    if isinstance(err, ReportedElsewhere):  # another process's error: that one says it
        return 2
    processes.record_for_torchrun(str(err))
    if (line := processes.error_line(err)) is not None:
        log.error(line)
    return 2
