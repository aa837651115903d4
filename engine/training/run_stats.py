"""What a run cost and what it scored, for summary.json: size, peak memory, time, throughput, evaluated samples.

These are the figures a comparison table needs beside the metrics (tools/sweep.py reads them): a run's
parameter count and peak memory decide whether a variant fits a card, its wall time and throughput what it
costs, and ``scored`` says how many samples each reported split's metrics are over (a seeded subset or all).
"""
from __future__ import annotations

import math
import resource
import sys

import torch


def parameter_counts(module: torch.nn.Module) -> dict[str, int]:
    """All parameters, and those that train in the stage the run ended in (its last stage)."""
    return {"num_parameters": sum(p.numel() for p in module.parameters()),
            "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad)}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory tensors ever held on ``device`` (max_memory_allocated). CPU: the process's peak
    resident set size (max RSS), which also counts the interpreter, libraries and the data mapped in."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def time_and_throughput(records: list[dict]) -> dict[str, float]:
    """Training + per-epoch validation time summed over the epochs in metrics.jsonl (so a resumed run counts
    every epoch once, whatever its restarts), and the mean training throughput over those epochs."""
    times = [r["epoch_time_s"] for r in records if "epoch_time_s" in r]
    ips = [r["images_per_s"] for r in records if "images_per_s" in r]
    return {"wall_time_s": float(sum(times)) if times else math.nan,
            "train_images_per_s": float(sum(ips) / len(ips)) if ips else math.nan}


def scored(cfg, ctx, splits: tuple[str, ...]) -> dict[str, dict]:
    """Per reported split: how many samples its metrics are over, and the subset setting that chose them."""
    from engine.data.manifest import split_limit

    return {s: {"samples": len(ctx.split(s)), "available": len(ctx.manifest.split_indices(s)),
                "max_samples": split_limit(cfg.data, s)} for s in splits}


def run_statistics(module: torch.nn.Module, device: torch.device, records: list[dict], cfg, ctx,
                   splits: tuple[str, ...]) -> dict:
    """The summary.json fields of this module: counts, peak memory, time, throughput, what was scored."""
    return {**parameter_counts(module), "peak_memory_mb": peak_memory_mb(device), **time_and_throughput(records),
            "scored": scored(cfg, ctx, splits)}
