"""What the step-time benchmarks share: the median step time after warm-up steps, and its report."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_time(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds of one call of `step`, the median of `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    laps = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        laps.append(time.perf_counter() - start)
    return statistics.median(laps)


def print_speedup(times: dict[str, float]) -> None:
    """Each variant's median step time, then how many times faster the first is than the last."""
    for name, seconds in times.items():
        print(f"  {name:16s} {seconds * 1000:9.1f} ms/step")
    seconds = list(times.values())
    print(f"  speed-up of caching: {seconds[-1] / seconds[0]:.2f}x")
