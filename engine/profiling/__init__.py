"""Throughput profiling: what bounds training, measured stage by stage.

    probes.py      the registry of pipeline-stage probes (read, decode, augment, h2d, model, end_to_end), the Session
    timing.py      warm-up, CUDA events / synchronised host timers, medians
    model_step.py  the one function that builds the model + optimizer step (no DeepSpeed)
    report.py      table, JSON, PNG, verdict (bound stage and rule-based advice)

Entry point: ``python tools/profile_throughput.py --config CONFIG``.

JSON written by ``--json`` (``Profile.to_json``)::

    {
      "device": str,                  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
      "precision": str,               # fp32 / bf16 / fp16, as engine.hardware chose it
      "batch_size": int,              # loader.batch_size
      "cpu_count": int,               # os.cpu_count()
      "stages": [{"stage": "read" | "decode" | "augment" | "h2d" | "model" | "end_to_end",
                  "name": str,        # the variant, e.g. "pil 2 workers", "reference", "cache"
                  "images_per_s": float,
                  "gb_per_s": float | null,   # bytes gathered / decoded / moved per second, 1e9
                  "median_s": float,  # median seconds of one timed call (end_to_end: of one step)
                  "repeats": int,     # timed calls (end_to_end, model: steps)
                  "feeds": [str],     # backends this stage is on the path of
                  "model_nearby_images_per_s": float | null}],  # end_to_end: model-only around it
      "model_images_per_s": float,    # the ceiling: model step on device-resident inputs
      "end_to_end": {backend: {"images_per_s": float,
                               "ratio": float,            # images_per_s / model_images_per_s
                               "ratio_bracketed": float}},  # / model-only steps timed right before and after
      "bound": {backend: str},        # "stage:name" of the slowest stage feeding it (or the model)
      "advice": [str],                # rule-based, from the numbers above
      "skipped": [{"stage": str, "name": str, "reason": str}],  # what could not run here, and why
      "settings": {...}               # workers, sizes, threads, load average, optimizer, date
    }

End-to-end images/s are over the total time of the timed steps (stalls count);
the model-only rate is from the median step. On a shared machine the load
drifts between stages, so each backend's end-to-end steps are also compared
with model-only steps timed right before the loader starts and right after it
stops (``ratio_bracketed``); the advice judges by that ratio.
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, Optional

from engine.profiling.probes import STAGES, Session, Skipped, StageResult, register_stage, run_stages
from engine.profiling.report import Profile, table, verdict, write_json, write_png

__all__ = ["Profile", "STAGES", "Session", "Skipped", "StageResult", "profile", "register_stage", "table", "verdict",
           "write_json", "write_png"]


def profile(cfg, stages: Optional[list[str]] = None, steps: int = 10, repeats: int = 3, warmup: int = 2,
            log: Callable[[str], None] = lambda m: None) -> Profile:
    """Measure ``stages`` (default: all) for run config ``cfg`` on the current device."""
    import torch

    from engine import hardware
    from engine.profiling.model_step import OPTIMIZER_NOTE, compiled

    s = Session(cfg, steps, repeats, warmup)
    outcomes = run_stages(s, stages, log)
    settings = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "optimizer": OPTIMIZER_NOTE,
        "device_kind": s.info.kind, "family": s.info.family, "triton_supported": hardware.triton_supported(s.info),
        "augment_impl": s.augment_impl, "channels_last": s.channels_last, "compile": compiled(cfg, s.device),
        "num_workers": cfg.loader.num_workers, "prefetch": cfg.loader.prefetch, "pin_memory": cfg.loader.pin_memory,
        "image_size": cfg.data.image_size, "stored_size": cfg.cache.stored_size,
        "text_max_length": cfg.model.text_max_length, "backbone": cfg.model.backbone, "text_encoder": cfg.model.text_encoder,
        "backends": s.backends, "steps": s.steps, "repeats": s.repeats, "warmup": s.warmup,
    }
    return Profile.from_outcomes(outcomes, device=s.info.name, precision=s.precision, batch_size=s.batch_size,
                                 cpu_count=os.cpu_count() or 1, settings=settings)
