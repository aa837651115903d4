"""The profiler's probes: each stage of the training data path measured alone, plus the model and end to end.

A stage function takes the ``Session`` and yields ``StageResult`` (a measured
rate) or ``Skipped`` (why it could not be measured here). Register new ones
with ``@register_stage(name)``; ``STAGES`` keeps registration order, which is
the order of the data path:

    read        cache records gathered by the cache loader (pinned ring + async copy on CUDA)
    decode      PIL/libjpeg on 1 core and in a process pool; DALI CPU / GPU when DALI backends exist
    augment     kernels.Augmenter on the device: reference, and the fused Triton kernel on sm_80+
    h2d         pinned host -> device copies of a uint8 (cache) and a float32 (pil) batch
    model       forward + backward + optimizer step on device-resident synthetic inputs (the ceiling)
    end_to_end  real training steps from every registered loader backend that can be built here

Each result says which backends it ``feeds``: the verdict's bound of a backend
is the slowest of its feeding stages and the model.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from engine import hardware, optional
from engine.profiling.timing import synchronize, time_call
from engine.registry import Registry


@dataclass
class StageResult:
    stage: str  # one of STAGES
    name: str  # the variant measured, e.g. "pil 2 workers"
    images_per_s: float
    gb_per_s: Optional[float]  # bytes moved or produced per second / 1e9; None where bytes mean nothing
    median_s: float  # median seconds of one timed call
    repeats: int  # timed calls
    images_per_call: int = 0
    feeds: tuple[str, ...] = ()  # loader backends this stage is on the path of
    model_nearby_images_per_s: Optional[float] = None  # end_to_end: model-only rate measured right before and after

    @property
    def label(self) -> str:
        return f"{self.stage}:{self.name}"


@dataclass
class Skipped:
    stage: str
    name: str
    reason: str


Outcome = Union[StageResult, Skipped]
STAGES: Registry = Registry("--stages")  # name -> Callable[[Session], Iterator[Outcome]], in data-path order
register_stage = STAGES.register


class Session:
    """What every stage needs: config, data, device, precision, and the measurement budget."""

    def __init__(self, cfg, steps: int = 10, repeats: int = 3, warmup: int = 2):
        from engine.data.context import DataContext

        self.cfg, self.steps, self.repeats, self.warmup = cfg, max(1, steps), max(1, repeats), max(0, warmup)
        self.device = hardware.default_device()  # the real device, even when a capability is forced for a test
        self.info = hardware.device_info(self.device)
        self.precision = hardware.choose_precision(self.info, cfg.train.precision)
        self.dtype = hardware.torch_dtype(self.precision)
        self.channels_last = hardware.use_channels_last(self.info, cfg.train.channels_last)
        self.batch_size = cfg.loader.batch_size
        self.workers = max(1, cfg.loader.num_workers)  # 0 means decoding in the training process: one worker
        self.ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length)

    @cached_property
    def model_step(self):
        from engine.profiling.model_step import model_step_fn

        return model_step_fn(self.cfg, self.ctx, self.device, self.precision, self.channels_last)

    @property
    def backends(self) -> list[str]:
        """Loader backends registered in this checkout (others may be added while we run)."""
        from engine.data.loaders import LOADER_BACKENDS

        return list(LOADER_BACKENDS)

    @property
    def augment_impl(self) -> str:
        """The implementation DevicePipe will use for uint8 batches."""
        try:
            return hardware.choose_augment_impl(self.info, self.cfg.augment.impl)
        except ValueError:
            return "reference"


def _forever(loader) -> Iterator:
    """Batches across epochs, as a training run sees them."""
    while True:
        yield from loader


# --- read -----------------------------------------------------------------------------


@register_stage("read")
def read_cache(s: Session) -> Iterator[Outcome]:
    from engine.data.cache import CacheError, open_cache
    from engine.data.cache.loader import CacheLoader

    try:
        reader = open_cache(s.cfg, s.ctx, "train")
    except CacheError as e:
        yield Skipped("read", "cache", str(e))
        return
    cfg = s.cfg.loader
    loader = CacheLoader(reader, batch_size=s.batch_size, train=True, rank=0, world=1, seed=s.cfg.run.seed,
                         num_workers=cfg.num_workers, prefetch=cfg.prefetch, pin_memory=cfg.pin_memory, device=s.device)
    batches = max(4 * s.steps, 16)  # cheap: enough batches per call that thread start-up is amortised
    it = _forever(loader)

    def call():
        for _ in range(batches):
            next(it)

    try:
        t = time_call(call, s.device, s.repeats, warmup=1)
    finally:
        it.close()
    images = batches * s.batch_size
    where = "pinned, async copy" if s.device.type == "cuda" and cfg.pin_memory else "host"
    yield StageResult("read", f"cache {cfg.num_workers} threads ({where})", t.rate(images),
                      t.rate(images * reader.stride) / 1e9, t.median_s, t.repeats, images, ("cache", "dali_cache"))


# --- decode ---------------------------------------------------------------------------


def _decoded_bytes(path: str) -> int:
    """Decode like the PIL loader does (top-level so a process pool can run it)."""
    from engine.data.pil_loader import decode_rgb

    im = decode_rgb(path)
    return im.width * im.height * 3


@register_stage("decode")
def decode(s: Session) -> Iterator[Outcome]:
    import multiprocessing

    paths = s.ctx.split("train").paths[: max(2 * s.batch_size, 2 * s.workers)]
    n = len(paths)
    nbytes = sum(_decoded_bytes(p) for p in paths)  # also the warm-up: files in the page cache
    t = time_call(lambda: [_decoded_bytes(p) for p in paths], torch.device("cpu"), s.repeats, warmup=0)
    yield StageResult("decode", "pil 1 core", t.rate(n), t.rate(nbytes) / 1e9, t.median_s, t.repeats, n)
    with multiprocessing.get_context("fork").Pool(s.workers) as pool:
        pool.map(_decoded_bytes, paths[: s.workers])  # start the workers outside the timing
        t = time_call(lambda: pool.map(_decoded_bytes, paths, chunksize=1), torch.device("cpu"), s.repeats, warmup=0)
    yield StageResult("decode", f"pil {s.workers} workers", t.rate(n), t.rate(nbytes) / 1e9, t.median_s, t.repeats, n, ("pil",))
    yield from _dali_decode(s, paths, nbytes)


def _dali_decode(s: Session, paths: list[str], nbytes: int) -> Iterator[Outcome]:
    if not {"dali", "dali_cache"} & set(s.backends):
        return  # DALI backends not in this checkout: nothing to compare against
    try:
        optional.require("dali", "the DALI decode stage")
    except optional.MissingDependency as e:
        yield Skipped("decode", "dali", str(e))
        return
    from nvidia.dali import fn, pipeline_def, types

    variants = [("cpu", "cpu")] + ([("gpu", "mixed")] if s.device.type == "cuda" else [])
    if s.device.type != "cuda":
        yield Skipped("decode", "dali gpu", "no CUDA device")
    for label, dev in variants:
        kw = {}
        if dev == "mixed":
            load = s.cfg.loader.dali_hw_decoder_load
            kw["hw_decoder_load"] = hardware.dali_decoder_defaults(s.info)["hw_decoder_load"] if load is None else load

        @pipeline_def(batch_size=s.batch_size, num_threads=s.workers, prefetch_queue_depth=2,
                      device_id=s.device.index if s.device.type == "cuda" else None)
        def pipe():
            jpegs, _ = fn.readers.file(files=list(paths), name="reader")
            return fn.decoders.image(jpegs, device=dev, output_type=types.RGB, **kw)

        try:
            p = pipe()
            p.build()
            calls = -(-len(paths) // s.batch_size)
            t = time_call(lambda: [p.run() for _ in range(calls)], s.device, s.repeats, warmup=1)
        except Exception as e:  # noqa: BLE001 - a DALI failure must not end the profile
            yield Skipped("decode", f"dali {label}", f"{type(e).__name__}: {e}")
            continue
        images = calls * s.batch_size
        yield StageResult("decode", f"dali {label}", t.rate(images), t.rate(nbytes * images / len(paths)) / 1e9,
                          t.median_s, t.repeats, images, ("dali",) if dev == "mixed" or s.device.type != "cuda" else ())


# --- augment --------------------------------------------------------------------------


@register_stage("augment")
def augment(s: Session) -> Iterator[Outcome]:
    from kernels import Augmenter

    size, out = s.cfg.cache.stored_size, s.cfg.data.image_size
    b = s.batch_size
    images = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, device=s.device)
    ids = torch.arange(b, device=s.device)
    moved = b * (size * size * 3 + 3 * out * out * s.dtype.itemsize)  # read the uint8 batch, write the float one
    in_use = s.augment_impl
    for impl in ("reference", "triton"):
        if impl == "triton" and not (s.device.type == "cuda" and hardware.triton_supported(s.info)):
            why = ("CPU: Triton runs only in its (very slow) interpreter there" if s.device.type == "cpu"
                   else f"{s.info.name}: the fused kernel needs sm_80+")
            yield Skipped("augment", impl, why)
            continue
        try:
            aug = Augmenter(s.cfg.augment, out, s.cfg.run.seed, s.dtype, s.channels_last, impl=impl, device=s.device)
            epoch = iter(range(10**9))  # fresh parameters every call, as in training
            t = time_call(lambda: aug.train(images, ids, next(epoch)), s.device, s.repeats, s.warmup, device_events=True)
        except Exception as e:  # noqa: BLE001 - e.g. triton missing or failing to compile: report, go on
            yield Skipped("augment", impl, f"{type(e).__name__}: {e}")
            continue
        yield StageResult("augment", impl, t.rate(b), t.rate(moved) / 1e9, t.median_s, t.repeats, b,
                          ("cache",) if impl == in_use else ())


# --- host to device -------------------------------------------------------------------


@register_stage("h2d")
def host_to_device(s: Session) -> Iterator[Outcome]:
    if s.device.type != "cuda":
        yield Skipped("h2d", "copy", "n/a on CPU: batches are already where the model runs")
        return
    b, size, out = s.batch_size, s.cfg.cache.stored_size, s.cfg.data.image_size
    pin = s.cfg.loader.pin_memory
    for name, shape, dtype, feeds in (("uint8 NHWC batch", (b, size, size, 3), torch.uint8, ("cache", "dali_cache")),
                                      ("float32 NCHW batch", (b, 3, out, out), torch.float32, ("pil",))):
        src = torch.empty(shape, dtype=dtype, pin_memory=pin)
        dst = torch.empty(shape, dtype=dtype, device=s.device)
        t = time_call(lambda: dst.copy_(src, non_blocking=True), s.device, max(s.repeats, 10), s.warmup, device_events=True)
        nbytes = src.numel() * src.element_size()
        yield StageResult("h2d", f"{name}{' pinned' if pin else ''}", t.rate(b), t.rate(nbytes) / 1e9, t.median_s,
                          t.repeats, b, feeds)


# --- model ----------------------------------------------------------------------------


def synthetic_inputs(s: Session) -> tuple[dict, torch.Tensor]:
    """A device-resident batch: random normalised images, real tokens / tabular fields / labels."""
    data = s.ctx.split("train")
    f = {k: torch.from_numpy(np.ascontiguousarray(v)).to(s.device)
         for k, v in data.fields(np.arange(s.batch_size) % len(data)).items()}
    size = s.cfg.data.image_size
    images = torch.randn(s.batch_size, 3, size, size, device=s.device).to(s.dtype)
    if s.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    inputs = dict(images=images, input_ids=f["input_ids"], attention_mask=f["attention_mask"],
                  numeric=f["numeric"].to(s.dtype), categorical=f["categorical"])
    return inputs, f["labels"]


@register_stage("model")
def model(s: Session) -> Iterator[Outcome]:
    ms = s.model_step
    inputs, targets = synthetic_inputs(s)
    t = time_call(lambda: ms.step(inputs, targets), s.device, s.steps, s.warmup, device_events=True)
    yield StageResult("model", "forward+backward+step", t.rate(s.batch_size), None, t.median_s, t.repeats, s.batch_size)


# --- end to end -----------------------------------------------------------------------


@register_stage("end_to_end")
def end_to_end(s: Session) -> Iterator[Outcome]:
    """``steps`` real training steps per backend; images/s over their total time (stalls included).

    Model-only steps are timed just before the loader starts and just after it
    stops (``model_nearby_images_per_s``): on a shared machine the load drifts
    between stages, and this bracket compares like with like. The loader does not
    exist during the first block, so it gets no head start.
    """
    from engine.data.loaders import create_loader

    ms = s.model_step
    inputs, targets = synthetic_inputs(s)
    bracket = max(1, s.steps // 2)
    ms.step(inputs, targets)  # untimed: optimizer state exists before the first bracket

    def model_steps() -> float:
        """Seconds for ``bracket`` model-only steps (a total, like the end-to-end figure: spikes count in both)."""
        t = time.perf_counter()
        for _ in range(bracket):
            ms.step(inputs, targets)
        synchronize(s.device)
        return time.perf_counter() - t

    for backend in s.backends:
        cfg = copy.deepcopy(s.cfg)
        cfg.loader.backend = backend
        try:
            loader = create_loader(cfg, s.ctx, "train", True)  # loaders start reading on iteration, not here
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            yield Skipped("end_to_end", backend, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        nearby = model_steps()
        it = _forever(loader)
        try:

            def one():
                inputs_, targets_, _ = ms.pipe(next(it), True, loader.epoch, ms.num_classes)
                ms.step(inputs_, targets_)

            for _ in range(s.warmup):
                one()
            synchronize(s.device)
            times, t0 = [], time.perf_counter()
            for _ in range(s.steps):
                t = time.perf_counter()
                one()  # no per-step sync on CUDA: it would stop the host running ahead of the device
                times.append(time.perf_counter() - t)
            synchronize(s.device)
            total = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            yield Skipped("end_to_end", backend, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        finally:
            it.close()  # stops loader threads / worker processes before the second model block
        nearby += model_steps()
        images = s.steps * s.batch_size
        yield StageResult("end_to_end", backend, images / total, None, float(np.median(times)), s.steps, s.batch_size,
                          model_nearby_images_per_s=2 * bracket * s.batch_size / nearby)


def run_stages(s: Session, names: Optional[list[str]] = None, log: Callable[[str], None] = lambda m: None) -> list[Outcome]:
    names = list(STAGES) if not names else names
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"--stages: unknown {unknown}; known stages are {list(STAGES)}")
    out: list[Outcome] = []
    for name in STAGES:  # data-path order whatever order they were asked in
        if name not in names:
            continue
        for r in STAGES[name](s):
            out.append(r)
            log(f"  {r.stage:<10} {r.name:<32} " + (f"{r.images_per_s:>10,.1f} images/s" if isinstance(r, StageResult)
                                                   else f"skipped: {r.reason}"))
    return out
