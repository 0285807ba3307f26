"""Two forked processes started as torchrun starts its workers (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), each calling `main([...])`: quick (nothing imported again), and each
rank's return codes and stderr can be read back. Without torchrun's agent, process 0 hosts the
processes' store."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from main import main
from training.distributed import ShardedBatchSampler, World

Run = list[str] | tuple[list[str], list[str]]  # main.py's arguments, the same for both ranks or one list each


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def interrupt_during(epoch: int) -> None:
    """Ctrl-C in the training loop of `epoch`, once the epochs before it are checkpointed (as a signal would)."""
    from training import engine

    real = engine.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        if args[5] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    engine.train_one_epoch = train_one_epoch


def _rank(rank: int, runs: list[tuple[Run, int]], interrupt: int | None, folder: Path) -> None:
    """Rank `rank` of 2: `main(args)` for each (args, port) of `runs`; return codes and stderr into `folder`."""
    sys.stderr = open(folder / f"rank{rank}.err", "w", buffering=1)
    if interrupt is not None:
        interrupt_during(interrupt)
    torch.set_num_threads(1)
    returned = []
    for args, port in runs:
        os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        returned.append(main(args[rank] if isinstance(args, tuple) else args))
    (folder / f"rank{rank}.json").write_text(json.dumps(returned))


def rank_batches(n: int, bsize: int, size: int, seed: int) -> list[list[list[int]]]:
    """Per rank, its batches of one epoch, drawn as the DataLoader draws (base seed, then the permutation)."""
    out = []
    for rank in range(size):
        generator = torch.Generator().manual_seed(seed)
        sampler = ShardedBatchSampler(RandomSampler(range(n), generator=generator), bsize,
                                      World(rank, size, rank))
        loader = DataLoader(range(n), batch_sampler=sampler, generator=generator)
        out.append([batch.tolist() for batch in loader])
    return out


def start_two(runs: list[Run], folder: Path, interrupt: int | None = None):
    """Each of `runs` by 2 forked ranks in turn; the processes' context, not joined."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(runs))
    return torch.multiprocessing.start_processes(_rank, args=(list(zip(runs, ports)), interrupt, folder), nprocs=2,
                                                 start_method="fork", join=False)


def run_two(runs: list[Run], folder: Path, interrupt: int | None = None) -> tuple[list[list[int]], list[str]]:
    """Each of `runs` by 2 forked ranks in turn: per rank, the return codes and what it wrote on stderr."""
    context = start_two(runs, folder, interrupt)
    while not context.join():
        pass
    return ranks_output(folder)


def ranks_output(folder: Path) -> tuple[list[list[int]], list[str]]:
    return ([json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)],
            [(folder / f"rank{rank}.err").read_text() for rank in (0, 1)])
