"""The processes of a torchrun run: where they meet, and how an error in one reaches the others.

    rendezvous()     before the command line is parsed: the key-value store every process
                     reaches (torchrun's agent's, or process 0's when started without the agent)
    agree(setup)     every process runs `setup` (parse the flags, check the paths); an error in
                     any of them stops all of them, printed once, by process 0
    process_group()  the collectives (nccl on CUDA, gloo on the CPU), built on that store. A
                     process that leaves it with an error publishes the error and prints it, naming
                     itself (`error_line`: process 0 prints it, unnamed, when every process met it);
                     the others, whose collectives then fail (gloo: at once), find it
                     (`peer_failure`) and stop with it without a word, process 0 marking
                     results.json failed with it

Without torchrun each is a no-op: one process, no store.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import time
import traceback
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from errors import ReportedElsewhere, UserError
from training.distributed import TIMEOUT, world

T = TypeVar("T")

# How long a process with an error waits to see whether the others met the same one (then process 0
# says it once for all), and how long process 0, when it hosts the store, waits for the others to be done with it.
SAME_ERROR_WAIT = datetime.timedelta(seconds=5)
LEAVE_WAIT = datetime.timedelta(seconds=60)

_store: dist.Store | None = None  # under torchrun, from rendezvous() on


def process_name(rank: int | None = None) -> str:
    here = world()
    return f"process {here.rank if rank is None else rank} of {here.size}"


@contextlib.contextmanager
def rendezvous() -> Iterator[None]:
    """Under torchrun, the store of the run's processes for the body (keys of this launch attempt only)."""
    global _store
    here = world()
    if not here.distributed:
        yield
        return
    store, _, _ = next(dist.rendezvous("env://", timeout=TIMEOUT))
    _store = dist.PrefixStore(f"spml/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    try:
        yield
    finally:
        _leave()
        _store = None


def _leave() -> None:
    """Say this process is done with the store; process 0, when it hosts the store (no torchrun agent),
    first waits a while for the others to be done with it."""
    here = world()
    with contextlib.suppress(RuntimeError):  # a process that died never says it left
        if not here.is_main:
            _store.set(f"left/{here.rank}", "")
        elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            _store.wait([f"left/{rank}" for rank in range(1, here.size)], LEAVE_WAIT)


def _message(err: BaseException) -> str:
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"


class Settled(UserError):
    """An error whose line every process agreed on (`agree`): process 0 prints it as it is."""


def agree(setup: Callable[[], T]) -> T:
    """`setup()` on every process; if it fails on any, every process stops: process 0 prints the error
    (naming the first process that met it, unless every process met it), the others say nothing."""
    here = world()
    if not here.distributed:
        return setup()
    try:
        value, own = setup(), None
    except UserError as err:
        value, own = None, err
    except BaseException as err:  # --help, a bug: the others must not wait for this process
        _store.set(f"setup/{here.rank}", _message(err))
        raise
    _store.set(f"setup/{here.rank}", "" if own is None else _message(own))
    failed = [(rank, message) for rank in range(here.size) if (message := _store.get(f"setup/{rank}").decode())]
    if not failed:
        return value
    if not here.is_main:
        raise ReportedElsewhere(failed[0][1])  # process 0 says it
    rank, message = failed[0]
    everyone = len(failed) == here.size and len({message for _, message in failed}) == 1
    raise Settled(message if everyone else f"{process_name(rank)}: {message}") from own


def peer_failure(own: str | None = None) -> str | None:
    """The first error another process published (`process r of N: message`), unless it is `own`
    (every process met the same error); None without one, and in one process."""
    here = world()
    if _store is None:
        return None
    with contextlib.suppress(RuntimeError):  # a store that is gone: no news
        for rank in range(here.size):
            key = f"failed/{rank}"
            if rank != here.rank and _store.check([key]) and (message := _store.get(key).decode()) != own:
                return f"{process_name(rank)}: {message}"
    return None


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """The process group of a torchrun run (nccl on CUDA, gloo on the CPU), destroyed on the way out.

    An error leaving it is published on the store first, for the processes it leaves waiting; an
    error caused by another process's (its collective failed when that one left) becomes that one's.
    """
    here = world()
    if not here.distributed:
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    on_store = dict(store=_store, rank=here.rank, world_size=here.size) if _store is not None else {}
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                            device_id=torch.device(device) if cuda else None, **on_store)
    try:
        dist.barrier()  # every rank has passed its checks before any writes (nccl connects lazily)
        yield
    except (KeyboardInterrupt, ReportedElsewhere) as err:
        _leave_group(err)
        raise
    except BaseException as err:
        if (peer := peer_failure(own=_message(err))) is not None:
            _leave_group(err)
            raise ReportedElsewhere(peer) from err
        if _store is not None:
            with contextlib.suppress(RuntimeError):  # a store that is gone: the others learn nothing
                _store.set(f"failed/{here.rank}", _message(err))
        _leave_group(err)
        raise
    dist.destroy_process_group()


def _leave_group(err: BaseException) -> None:
    """Destroy the process group at once, so that a process waiting on this one in a collective fails
    now (gloo: it sees the connection close). Gloo closes its connections only when nothing holds the
    group any more: the finished frames of the error's traceback hold the DDP model, which holds it."""
    while err is not None:
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__
    gc.collect()
    dist.destroy_process_group()


def error_line(err: UserError) -> str | None:
    """What this process prints for its own error: `error: message`, naming the process under torchrun
    unless every process met it; None when process 0 met it too (process 0 says it)."""
    here = world()
    if not here.distributed or isinstance(err, Settled):
        return f"error: {err}"
    others = range(1, here.size) if here.is_main else [0]
    deadline = time.monotonic() + SAME_ERROR_WAIT.total_seconds()
    same = all(_failed_with(rank, str(err), deadline) for rank in others)
    if same:
        return f"error: {err}" if here.is_main else None
    return f"error: {process_name()}: {err}"


def _failed_with(rank: int, message: str, deadline: float) -> bool:
    """Whether process `rank` published the error `message` (it has until `deadline` to)."""
    with contextlib.suppress(RuntimeError):  # a store that is gone: no news
        while not _store.check([f"failed/{rank}"]):  # polled: a store's timed wait logs its time-out
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return _store.get(f"failed/{rank}").decode() == message
    return False


def record_for_torchrun(message: str) -> None:
    """This process's error, for torchrun's summary of the failed processes (its "Root Cause" shows it)."""
    if path := os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's error file format, message only
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
