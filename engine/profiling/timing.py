"""Timing that is honest on both CPU and CUDA: warm up, synchronise, repeat, take the median.

Device work (augmentation, copies, model steps) is timed with CUDA events on
the current stream, which measure the GPU timeline rather than how fast the
host enqueued it. Host work (loaders, decoding) and everything on CPU is
timed with ``time.perf_counter`` after synchronising the device, so queued
kernels are never left out of a measurement.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float  # median seconds of one call
    repeats: int  # timed calls

    def rate(self, items: float) -> float:
        """Items per second when one call processes ``items``."""
        return items / self.median_s if self.median_s > 0 else float("inf")


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
              device_events: bool = False) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    ``device_events``: time with CUDA events (for pure device work); ignored on CPU.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    use_events = device_events and device.type == "cuda"
    times = []
    for _ in range(repeats):
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            synchronize(device)  # queued kernels belong to this call
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), repeats)
