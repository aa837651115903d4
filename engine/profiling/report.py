"""A profile's results: table, JSON, PNG bar chart, and the rule-based verdict.

The verdict is computed from the measured numbers only (plus the settings
recorded in ``Profile.settings``), so it can be tested on made-up profiles.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from engine.profiling.probes import Outcome, Skipped, StageResult

FED = 0.9  # end-to-end / model-only at or above this: the data path keeps the model busy


@dataclass
class Profile:
    device: str
    precision: str
    batch_size: int
    cpu_count: int
    results: list[StageResult]
    skipped: list[Skipped] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what the advice rules read (workers, sizes, impls, ...)

    @classmethod
    def from_outcomes(cls, outcomes: list[Outcome], **kw) -> "Profile":
        return cls(results=[o for o in outcomes if isinstance(o, StageResult)],
                   skipped=[o for o in outcomes if isinstance(o, Skipped)], **kw)

    @property
    def model_images_per_s(self) -> Optional[float]:
        rates = [r.images_per_s for r in self.results if r.stage == "model"]
        return rates[0] if rates else None

    @property
    def end_to_end(self) -> dict[str, dict]:
        m = self.model_images_per_s
        out = {}
        for r in self.results:
            if r.stage == "end_to_end":
                out[r.name] = {"images_per_s": r.images_per_s, "ratio": r.images_per_s / m if m else None}
                if r.model_nearby_images_per_s:
                    out[r.name]["ratio_bracketed"] = r.images_per_s / r.model_nearby_images_per_s
        return out

    def bound(self) -> dict[str, str]:
        """Per backend: the slowest of the stages feeding it, and the model, each measured alone."""
        out = {}
        for backend in self.end_to_end:
            chain = [r for r in self.results if backend in r.feeds or r.stage == "model"]
            if chain:
                out[backend] = min(chain, key=lambda r: r.images_per_s).label
        return out

    def advice(self) -> list[str]:
        return advise(self)

    def to_json(self) -> dict:
        return {
            "device": self.device, "precision": self.precision, "batch_size": self.batch_size, "cpu_count": self.cpu_count,
            "stages": [{k: v for k, v in asdict(r).items() if k != "images_per_call"} for r in self.results],
            "model_images_per_s": self.model_images_per_s,
            "end_to_end": self.end_to_end,
            "bound": self.bound(),
            "advice": self.advice(),
            "skipped": [asdict(s) for s in self.skipped],
            "settings": self.settings,
        }


# --- the verdict ----------------------------------------------------------------------


def _rate(p: Profile, label: str) -> float:
    return next(r.images_per_s for r in p.results if r.label == label)


def advise(p: Profile) -> list[str]:
    """What to change, one line per finding, from the measured rates and ``p.settings``."""
    s, out = p.settings, []
    model = p.model_images_per_s
    if model is None:
        return ["no model-only measurement (stage 'model' not run): nothing to compare the data path against"]
    workers, cores = s.get("num_workers", 0), p.cpu_count
    for backend, e in p.end_to_end.items():
        bound = p.bound().get(backend, "")
        ratio = e.get("ratio_bracketed", e["ratio"])  # the bracket is immune to load drift between stages
        head = f"{backend}: end to end {e['images_per_s']:,.1f} images/s = {e['ratio']:.2f} x model-only" + (
            f" ({e['ratio_bracketed']:.2f} x the model steps timed around it)" if "ratio_bracketed" in e else "")
        if ratio >= FED and bound.startswith("model"):
            out.append(f"{head}; the model bounds it: speed-ups now come from the model side ({_model_tips(p)})")
            continue
        if bound.startswith("decode:pil"):
            tips = []
            if workers < cores:
                tips.append(f"more workers (loader.num_workers={workers}, {cores} CPUs)")
            tips.append("decode once instead of every epoch: python tools/build_cache.py --config CONFIG, "
                        "then loader.backend=cache"
                        + (f" (cache read measured at {_best(p, 'read'):,.0f} images/s)" if _best(p, "read") else ""))
            if s.get("device_kind") == "cuda" and "dali" in s.get("backends", []):
                tips.append("or loader.backend=dali to decode on the GPU "
                            "(nvJPEG; A100/H100 hardware decoder via loader.dali_hw_decoder_load)")
            out.append(f"{head}; bound by JPEG decode ({_rate(p, bound):,.1f} images/s): " + "; ".join(tips))
        elif bound.startswith("decode:dali"):
            out.append(f"{head}; bound by DALI decode ({_rate(p, bound):,.1f} images/s): "
                       + ("raise loader.dali_hw_decoder_load / loader.num_workers, or use loader.backend=dali_cache"
                          if s.get("device_kind") == "cuda"
                          else "DALI decodes on the CPU here; use a GPU or loader.backend=cache"))
        elif bound.startswith("read:"):
            out.append(f"{head}; bound by the cache read ({_rate(p, bound):,.1f} images/s): a smaller cache.stored_size "
                       f"(now {s.get('stored_size')}, training at {s.get('image_size')}) moves fewer bytes; more gather threads "
                       f"(loader.num_workers={workers}); keep the cache on local NVMe / in the page cache")
        elif bound.startswith("augment:reference"):
            fix = ("augment.impl=triton (fused kernel, sm_80+)" if s.get("triton_supported")
                   else "it runs in the training thread here; a GPU (sm_80+: fused Triton kernel) removes it from the host")
            out.append(f"{head}; bound by the reference augmentation ({_rate(p, bound):,.1f} images/s): {fix}; "
                       f"or a smaller cache.stored_size (now {s.get('stored_size')})")
        elif bound.startswith("augment:"):
            out.append(f"{head}; bound by the fused augmentation ({_rate(p, bound):,.1f} images/s): "
                       f"a smaller cache.stored_size (now {s.get('stored_size')}) or fewer jitter ops")
        elif bound.startswith("h2d:"):
            out.append(f"{head}; bound by the host-to-device copy ({_rate(p, bound):,.1f} images/s): "
                       + ("set loader.pin_memory=true; " if not s.get("pin_memory") else "")
                       + "copy uint8 (cache backend, 4x fewer bytes than float32) and a smaller cache.stored_size")
        else:  # every stage alone outruns the model, yet end to end falls short: they interfere
            out.append(f"{head}, though every feeding stage alone outruns the model ({model:,.1f} images/s): the loader "
                       f"and the step compete for the same {cores} CPUs (loader.num_workers={workers}, torch threads="
                       f"{s.get('torch_threads')}) or wait on each other; try fewer loader workers or torch threads, "
                       f"a deeper loader.prefetch (now {s.get('prefetch')}), or a data path that does less on the host (cache)")
    load = (s.get("load_average") or [0])[0]
    if load > cores:
        line = (f"this machine is oversubscribed (load average {load:.1f} on {cores} CPUs): rates drift between "
                "stages, so judge by the bracketed ratios and repeat the run before acting on a difference of 10-20%")
        if s.get("device_kind") == "cpu" and s.get("torch_threads", 1) > 1:
            line += (f"; torch runs {s.get('torch_threads')} intra-op threads, which wait for the slowest of them at "
                     "every op here: compare with --torch-threads 1 (torch.set_num_threads(1))")
        out.append(line)
    if not p.end_to_end:
        out.append("no end-to-end measurement: no backend could run here (see skipped)")
    return out


def _best(p: Profile, stage: str) -> Optional[float]:
    rates = [r.images_per_s for r in p.results if r.stage == stage]
    return max(rates) if rates else None


def _model_tips(p: Profile) -> str:
    s = p.settings
    if s.get("device_kind") != "cuda":
        return "a GPU; on CPU a smaller backbone or image size"
    tips = []
    if p.precision == "fp32" and s.get("family") in ("volta_turing", "ampere_hopper"):
        tips.append("train.precision=auto (bf16/fp16 tensor cores)")
    if not s.get("channels_last") and s.get("family") in ("volta_turing", "ampere_hopper"):
        tips.append("train.channels_last=true")
    if not s.get("compile"):
        tips.append("train.compile=true")
    tips.append("a larger loader.batch_size if memory allows")
    return ", ".join(tips)


# --- output ---------------------------------------------------------------------------


def table(p: Profile) -> str:
    st = p.settings
    lines = [f"device {p.device} | precision {p.precision} | batch {p.batch_size} | {p.cpu_count} CPUs"
             + (f" | torch threads {st['torch_threads']}" if "torch_threads" in st else "")
             + (f" | load average {' '.join(map(str, st['load_average']))}" if "load_average" in st else "")
             + (f" | {st['optimizer']}" if "optimizer" in st else ""),
             f"{'stage':<11}{'name':<36}{'images/s':>12}{'GB/s':>9}{'median s':>11}{'reps':>6}  feeds",
             "-" * 96]
    for r in p.results:
        gb = f"{r.gb_per_s:.3f}" if r.gb_per_s is not None else "-"
        lines.append(f"{r.stage:<11}{r.name:<36}{r.images_per_s:>12,.1f}{gb:>9}{r.median_s:>11.4f}{r.repeats:>6}"
                     f"  {','.join(r.feeds)}")
    for s in p.skipped:
        lines.append(f"{s.stage:<11}{s.name:<36}{'skipped':>12}  {s.reason[:160]}")
    return "\n".join(lines)


def verdict(p: Profile) -> str:
    m = p.model_images_per_s
    lines = ["verdict:"]
    if m:
        lines.append(f"  model-only ceiling: {m:,.1f} images/s")
    bound = p.bound()
    for backend, e in p.end_to_end.items():
        bracket = f" (bracketed {e['ratio_bracketed']:.2f})" if "ratio_bracketed" in e else ""
        ratio = f"{e['ratio']:.2f}" if e.get("ratio") is not None else "n/a (no model stage)"
        lines.append(f"  {backend:<11} end to end {e['images_per_s']:>9,.1f} images/s  ratio {ratio}{bracket}"
                     f"  bound: {bound.get(backend)}")
    lines += [f"  - {a}" for a in p.advice()]
    return "\n".join(lines)


def write_json(p: Profile, path: str | Path) -> None:
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(p.to_json(), indent=1))


COLORS = {"read": "#4c72b0", "decode": "#dd8452", "augment": "#55a868", "h2d": "#8172b3", "model": "#c44e52",
          "end_to_end": "#937860"}


def write_png(p: Profile, path: str | Path) -> None:
    """Bars of images/s per stage (log scale), the model-only ceiling as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=80)
    labels = [r.label.replace(":", "\n", 1) for r in p.results]
    rates = [r.images_per_s for r in p.results]
    bars = ax.bar(range(len(p.results)), rates, color=[COLORS.get(r.stage, "grey") for r in p.results])
    ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" for v in rates], fontsize=7)
    if p.model_images_per_s:
        ax.axhline(p.model_images_per_s, color="black", linestyle="--", linewidth=1,
                   label=f"model ceiling {p.model_images_per_s:,.1f} images/s")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    if rates:  # a floor well below the slowest bar, so small rates still show as bars
        ax.set_ylim(bottom=min(rates + [p.model_images_per_s or min(rates)]) / 4, top=max(rates) * 3)
    ax.set_xticks(range(len(p.results)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("images/s (log)")
    ax.set_title(f"{p.device}, {p.precision}, batch {p.batch_size}, {p.cpu_count} CPUs", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
