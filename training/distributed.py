"""Many processes, one run: what the world is under torchrun, and the few collectives a run needs.

    torchrun --nproc_per_node N main.py ...     one process per GPU (gloo CPU processes with -g cpu)

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (PyTorch's "torchrun (Elastic Launch)"
docs); without them the run is one process and every function here is a no-op, so the
single-process path runs no collective and gives the same numbers as before. How the
processes meet, agree on errors and build their process group: training/processes.py.

Batches (`ShardedBatchSampler`): the epoch's global order is the permutation a
single-process DataLoader draws from the same generator; each global batch of --bsize
is split among the ranks as evenly as possible, so their union covers every example
once. A loss that is a mean over images is computed on each rank's rows, weighted by its
share (`share_weight`): DDP averages the gradients over ranks, which then equal the gradient
of the global batch's mean loss. A loss with a batch statistic sees the whole global batch
(`GlobalBatch`).
Evaluation (`shard_rows`, `gather_rows`): each rank scores a contiguous slice of the
split, without padding, and the slices are gathered back in dataset order on every rank.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from errors import UserError
from methods.base import WholeBatch

# A rank that dies inside a collective leaves the others waiting; torchrun's agent stops the
# processes of its node at once, and this bounds the wait of the other nodes' processes.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


def world() -> World:
    """This process's place, from torchrun's environment; one process without it."""
    if not under_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def is_main() -> bool:
    return world().is_main


def same_as_main(value):
    """Rank 0's `value` on every rank (a picklable object, e.g. the default --out, named after its clock)."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The body runs on rank 0 first, then on the others, which find its work done (a built
    dataset, a cache file, a run folder cleaned up) and do the same checks, errors included."""
    here = world()
    if here.distributed and not here.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if here.distributed and here.is_main:
            dist.barrier()


# --- batches -------------------------------------------------------------------------------

def even_shares(count: int, parts: int) -> list[int]:
    """`count` split into `parts` shares differing by at most one, the larger first."""
    return [count // parts + (1 if part < count % parts else 0) for part in range(parts)]


def shard_rows(count: int, here: World) -> range:
    """The contiguous rows of a `count`-row split that rank `here` scores."""
    shares = even_shares(count, here.size)
    start = sum(shares[:here.rank])
    return range(start, start + shares[here.rank])


def batch_sampler(dataset: Dataset, bsize: int, shuffle: bool,
                  generator: torch.Generator | None = None) -> Sampler[list[int]]:
    """The batches of `dataset` this process loads. One process: what DataLoader(batch_size=bsize,
    shuffle=shuffle, generator=generator) builds, so the same draws give the same batches. Under
    torchrun: its part of each global batch (shuffle: train), or of its slice of the split (evaluation)."""
    here = world()
    rows = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    if not here.distributed:
        return BatchSampler(rows, bsize, drop_last=False)
    if shuffle:
        return ShardedBatchSampler(rows, bsize, here)
    if len(dataset) < here.size:
        raise UserError(f"a split of {len(dataset)} examples cannot be scored by {here.size} processes, one example "
                        f"each at least; run on at most {len(dataset)} processes")
    return BatchSampler(shard_rows(len(dataset), here), max(bsize // here.size, 1), drop_last=False)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's part of each global batch of `bsize` drawn from `rows` (a RandomSampler).

    The global batches are those a single-process BatchSampler over `rows` makes; a batch
    of n examples gives each rank a contiguous slice, n // size or one more. A last batch
    with fewer examples than ranks would leave a rank without a step DDP waits for: refused.
    """

    def __init__(self, rows: Sampler[int], bsize: int, here: World):
        self.rows, self.bsize, self.here = rows, bsize, here
        if 0 < (last := len(rows) % bsize) < here.size:
            raise UserError(f"--bsize {bsize} over {here.size} processes: the last batch of each epoch holds {last} "
                            f"of the {len(rows)} training examples, fewer than one per process; pick a --bsize that "
                            f"leaves a last batch of 0 or at least {here.size} examples")

    def __len__(self) -> int:
        return len(self.global_sizes())

    def global_sizes(self) -> list[int]:
        full, rest = divmod(len(self.rows), self.bsize)
        return [self.bsize] * full + ([rest] if rest else [])

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for row in self.rows:
            batch.append(row)
            if len(batch) == self.bsize:
                yield self._mine(batch)
                batch = []
        if batch:
            yield self._mine(batch)

    def _mine(self, batch: list[int]) -> list[int]:
        return [batch[i] for i in shard_rows(len(batch), self.here)]


def step_shares(loader: DataLoader) -> list[list[int]] | None:
    """Per step, how many examples of the global batch each rank loads (the sampler's split, before any
    unreadable image is skipped); None for a loader that is not sharded."""
    loader = getattr(loader, "loader", loader)  # --decode gpu wraps a DataLoader (device_decode.py)
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, ShardedBatchSampler) else loader.sampler
    if not isinstance(sampler, ShardedBatchSampler):
        return None
    return [even_shares(n, sampler.here.size) for n in sampler.global_sizes()]


def share_weight(counts: list[int]) -> float:
    """The factor of this rank's mean loss over its `counts[rank]` examples: local x world / global, so that
    DDP's average of the ranks' gradients is the gradient of the global batch's mean loss."""
    return counts[world().rank] * len(counts) / sum(counts)


class GlobalBatch(WholeBatch):
    """A global batch of which rank r holds `counts[r]` consecutive rows (ShardedBatchSampler's split).

    Every rank computes the whole batch's loss from the gathered rows: the same loss on every rank.
    The loss's own parameters (ROLE's label matrix) and per-example state (LL-Cp's corrections) see
    the whole batch on every rank, so they stay the same everywhere without merging; the model's
    gradient comes back through `_GatherRows`.
    """

    def __init__(self, counts: list[int]):
        self.counts = counts

    def gather(self, local: torch.Tensor, count: int | None = None) -> torch.Tensor:
        counts = self.counts if count is None else even_shares(count, len(self.counts))  # `part`'s shares
        if local.requires_grad:
            return _GatherRows.apply(local, counts)
        return _gather_padded(local, counts)

    def part(self, count: int) -> slice:
        rows = shard_rows(count, world())
        return slice(rows.start, rows.stop)


def _gather_padded(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The ranks' `counts[r]` rows each, concatenated in rank order (all_gather needs equal shapes: padded, then cut)."""
    rows = max(counts)
    padded = local if len(local) == rows else torch.cat([local, local.new_zeros((rows - len(local), *local.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, with a gradient for this rank's own.

    Every rank computes the same loss from the same gathered rows, so the gradient of this rank's
    rows is the same on every rank; summed over the ranks (what all_gather's backward computes with
    a collective) it is world x this rank's own, obtained without communication. DDP's average over
    the ranks divides it back: the model gets the single-process gradient.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        rank = world().rank
        ctx.rows = slice(sum(counts[:rank]), sum(counts[:rank + 1]))
        ctx.size = len(counts)
        return _gather_padded(local.detach(), counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.rows] * ctx.size, None


# --- collectives (no-ops in one process) ---------------------------------------------------

def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """The rows every rank scored (its `shard_rows` slice), in rank order, hence dataset order, on every rank."""
    here = world()
    if not here.distributed:
        return local
    count = torch.tensor([len(local)], device=local.device)
    counts = [torch.empty_like(count) for _ in range(here.size)]
    dist.all_gather(counts, count)
    counts = [int(n) for n in counts]
    padded = local.new_zeros((max(counts), *local.shape[1:]))  # all_gather needs equal shapes
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(here.size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if not world().distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world().size


def gather_counts(count: int, device: torch.device) -> list[int]:
    """Every rank's `count`, in rank order (one small collective, and a host sync on a GPU)."""
    if not world().distributed:
        return [count]
    counts = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world().size)]
    dist.all_gather(counts, torch.tensor(count, device=device))
    return [int(n) for n in counts]


def sum_over_ranks(count: int, device: torch.device) -> int:
    if not world().distributed:
        return count
    total = torch.tensor(count, device=device)
    dist.all_reduce(total)
    return int(total)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: DDP broadcasts them before each
    training forward, so after an epoch's last step each rank holds rank 0's plus its own last update."""
    if not world().distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module the training steps call: DistributedDataParallel around `model` under torchrun,
    `model` itself otherwise. Checkpoints and the weight EMA keep using `model` (no `module.` keys)."""
    if not world().distributed:
        return model
    if sync_bn:
        # replaces the BatchNorm modules inside `model`, keeping their parameters and buffers
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def bar_disabled() -> bool | None:
    """tqdm's `disable`: auto (a terminal) on rank 0, off elsewhere (one bar per run, not per rank)."""
    return None if is_main() else True
