"""The DALI pipelines: what each takes and emits.

Both pipelines emit two outputs per sample:
  images     float32 or float16, CHW, RGB, normalised with augment.mean/std, at
             data.image_size (already augmented for training), on the decode
             device ("cpu" without a GPU, GPU memory after a "mixed" decode)
  positions  int32 [1]: the split position of the sample (CPU). Every other
             field is gathered from it on the torch side, so pairing cannot drift.

``file_pipeline`` reads JPEGs with a *named* reader (``READER``) so the
iterator learns the epoch size from it; ``cache_pipeline`` takes uint8 HWC
batches from the decode cache through ``fn.external_source``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine import optional
from kernels.config import AugmentConfig

READER = "Reader"  # the file reader's name; DALIGenericIterator(reader_name=READER)


def import_dali():
    """(pipeline_def, fn, types), or an ImportError (optional.MissingDependency) that says what to install."""
    optional.require("dali", "loader.backend=dali/dali_cache (or cache.decoder=dali)")
    from nvidia.dali import fn, pipeline_def, types

    return pipeline_def, fn, types


@dataclass(frozen=True)
class DecodeSettings:
    """Where DALI decodes and how much it preallocates (from hardware.dali_decoder_defaults + loader.*)."""

    device: str  # "cpu" or "mixed" (nvJPEG: hardware decoder on A100/H100, CUDA elsewhere)
    hw_decoder_load: float = 0.0  # share of JPEGs sent to the hardware decoder (mixed only)
    prealloc_mb: int = 0  # nvJPEG host/device buffer padding; 0 = DALI default
    fp16: bool = False  # emit float16 (GPU training in fp16); otherwise float32

    @property
    def op_device(self) -> str:
        return "gpu" if self.device == "mixed" else "cpu"

    def decoder_kwargs(self) -> dict:
        if self.device != "mixed":
            return {}
        kw = {"hw_decoder_load": float(self.hw_decoder_load)}
        if self.prealloc_mb:
            pad = int(self.prealloc_mb) << 20
            kw.update(device_memory_padding=pad, host_memory_padding=pad)
        return kw


def check_supported(aug: AugmentConfig) -> None:
    """Refuse settings the DALI path does not implement (rather than silently ignoring them)."""
    if aug.erasing:
        raise ValueError("augment.erasing is not implemented by loader.backend=dali/dali_cache; set it to 0 or use 'pil'/'cache'")


def _uniform(fn, centre: float, spread: float, lo: float = -float("inf")):
    """Per-sample uniform [max(lo, centre - spread), centre + spread]; a constant when spread is 0 (DALI
    refuses an empty range)."""
    if not spread:
        return float(centre)
    return fn.random.uniform(range=[max(lo, centre - spread), centre + spread])


def augment_tail(images, aug: AugmentConfig, size: int, train: bool, settings: DecodeSettings):
    """Colour jitter, flip, normalise, cast, CHW; ``images`` are uint8 HWC RGB already at ``size`` (train)
    or resized so the shorter side is ``size / crop_pct`` (eval: centre crop here)."""
    _, fn, types = import_dali()
    dev = settings.op_device
    if train and (aug.brightness or aug.contrast or aug.saturation or aug.hue or aug.grayscale):
        # torchvision's factors: uniform [1-s, 1+s]; hue in turns -> DALI degrees. Grayscale = saturation 0.
        saturation = _uniform(fn, 1.0, aug.saturation, 0.0)
        if aug.grayscale:
            saturation = saturation * fn.random.coin_flip(probability=1.0 - aug.grayscale)
        images = fn.color_twist(images, device=dev, brightness=_uniform(fn, 1.0, aug.brightness, 0.0),
                                contrast=_uniform(fn, 1.0, aug.contrast, 0.0), saturation=saturation,
                                hue=_uniform(fn, 0.0, aug.hue * 360.0))
    mirror = fn.random.coin_flip(probability=aug.hflip) if train and aug.hflip else 0
    return fn.crop_mirror_normalize(
        images, device=dev, dtype=types.FLOAT16 if settings.fp16 else types.FLOAT, output_layout="CHW",
        crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5,
        mean=[255.0 * m for m in aug.mean], std=[255.0 * s for s in aug.std], mirror=mirror)


def eval_short_side(size: int, aug: AugmentConfig) -> int:
    """Evaluation resize of the shorter side, as torchvision/kernels do it (floor(size / crop_pct))."""
    return int(size / aug.eval_crop_pct)


def file_pipeline(files: list[str], positions: list[int], shard_id: int, num_shards: int, train: bool,
                  aug: AugmentConfig, size: int, settings: DecodeSettings, **pipe_kw):
    """JPEG files -> (images, positions). ``files`` is the whole epoch's list in order (every rank's
    shard concatenated); the reader takes block ``shard_id`` of ``num_shards`` without shuffling."""
    pipeline_def, fn, types = import_dali()

    @pipeline_def
    def _pipe():
        jpegs, pos = fn.readers.file(files=files, labels=positions, name=READER, shard_id=shard_id,
                                     num_shards=num_shards, random_shuffle=False, pad_last_batch=not train,
                                     stick_to_shard=True)
        if train:
            images = fn.decoders.image_random_crop(jpegs, device=settings.device, output_type=types.RGB,
                                                   random_area=list(aug.scale), random_aspect_ratio=list(aug.ratio),
                                                   num_attempts=10, **settings.decoder_kwargs())
            images = fn.resize(images, device=settings.op_device, resize_x=size, resize_y=size, antialias=True)
        else:
            images = fn.decoders.image(jpegs, device=settings.device, output_type=types.RGB, **settings.decoder_kwargs())
            images = fn.resize(images, device=settings.op_device, resize_shorter=eval_short_side(size, aug), antialias=True)
        return augment_tail(images, aug, size, train, settings), pos

    return _pipe(**pipe_kw)


def cache_pipeline(source, train: bool, aug: AugmentConfig, size: int, settings: DecodeSettings,
                   no_copy: bool = True, encoded: bool = False, **pipe_kw):
    """Decode-cache batches -> (images, positions). ``source`` yields (uint8 [B, S, S, 3], int32 [B, 1])
    and raises StopIteration at the end of the epoch; with ``no_copy`` the caller keeps each batch alive
    for longer than the prefetch queue holds it. ``encoded`` (cache.storage=jpeg): the images are B JPEGs
    (uint8 1-D each), decoded here on the decode device (nvJPEG on a GPU)."""
    pipeline_def, fn, types = import_dali()

    @pipeline_def
    def _pipe():
        images, pos = fn.external_source(source=source, num_outputs=2, batch=True,
                                         layout=["" if encoded else "HWC", ""],
                                         dtype=[types.UINT8, types.INT32], no_copy=no_copy)
        if encoded:
            images = fn.decoders.image(images, device=settings.device, output_type=types.RGB)
        elif settings.device == "mixed":
            images = images.gpu()
        if train:
            images = fn.random_resized_crop(images, device=settings.op_device, size=[size, size],
                                            random_area=list(aug.scale), random_aspect_ratio=list(aug.ratio),
                                            num_attempts=10, antialias=True)
        else:
            images = fn.resize(images, device=settings.op_device, resize_shorter=eval_short_side(size, aug), antialias=True)
        return augment_tail(images, aug, size, train, settings), pos

    return _pipe(**pipe_kw)


def pipe_kwargs(batch_size: int, num_threads: int, device_id: Optional[int], seed: int, prefetch: int) -> dict:
    return dict(batch_size=batch_size, num_threads=max(1, num_threads), device_id=device_id,
                seed=seed & 0x7FFFFFFF, prefetch_queue_depth=max(1, prefetch))
