"""Decode a chunk of image files to the cache's stored form with NVIDIA DALI (``cache.decoder=dali``).

Contract: ``DaliDecoder(size, policy, device)(paths)`` -> one entry per path, either
np.uint8 [size, size, 3] (HWC, RGB, EXIF orientation applied) or the exception
that rejects it, like ``decode.decode_resized`` per file.

The geometry is the PIL path's, computed on the host from the file's header with
the same formulas (crop: the centre square of side min(w, h), as a fractional
ROI; pad: fitted to round(w * s) x round(h * s), pasted at ((S - w') // 2,
(S - h') // 2) on ``PAD_FILL``). The two paths differ only by the JPEG decoder's
IDCT (libjpeg-turbo, nvJPEG or the A100/H100 hardware decoder) and the
resampling (DALI's antialiased Lanczos-3 against Pillow's LANCZOS); their
records agree within ``TOLERANCE`` (tests/data/test_cache_dali.py).

Only JPEGs in RGB or greyscale that end with their end-of-image marker go through
DALI. Every other file (PNG, WebP, CMYK JPEG, 16-bit, alpha, truncated), every
file whose header Pillow cannot read, and every file of a batch DALI fails on is
decoded by ``decode_resized`` itself, so alpha over white, CMYK, and the rejects and their reasons are the PIL
path's own. DALI decodes in the calling process with its own threads (one
process per GPU, not one per core).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from engine.data.cache.decode import PAD_FILL, decode_resized

# |DALI - PIL| per channel value: the mean over a record, and the share of values off by more than 16 (edges, where
# IDCTs and resampling kernels differ most). With cache.draft=false (both decode at full size) they agree to a mean
# of 0.2 at most (test thumbnails at 48 px; 0.16 on the demo photos at 256 px). Against Pillow's default DCT draft
# decode (big JPEGs decoded at 1/2 - 1/8 scale first, itself an approximation of the full decode) the difference is
# the draft's: mean up to 2.25 on the 48 px thumbnails, 0.74 on the demo photos at 256 px (docs/benchmarks.md).
TOLERANCE = {"mean_abs": 2.5, "frac_over_16": 0.03, "mean_abs_no_draft": 0.5, "frac_over_16_no_draft": 0.001}
BATCH = 32  # files per DALI run: enough to keep its threads (or the GPU) busy, small enough for 64-record chunks
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height

Result = Union[np.ndarray, Exception]


@dataclass(frozen=True)
class Plan:
    """Where one file's pixels go: the source ROI (y0, x0, y1, x1) resized to (h, w), pasted at (top, left)."""

    roi: tuple[float, float, float, float]
    out: tuple[int, int]
    at: tuple[int, int]


def plan(path: str, size: int, policy: str, draft: bool = True) -> Optional[Plan]:
    """The PIL path's geometry for ``path`` from its header, or None when DALI should not decode it.

    With ``draft`` the PIL path computes its geometry on the DCT-scaled size libjpeg decodes at
    (``_draft_scale``), which can move a padded image's fitted size by a pixel; the plan does the same and maps
    the region back to full-size coordinates, where DALI decodes."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "JPEG" or im.mode not in ("RGB", "L"):
            return None
        w, h = im.size
        transposed = im.getexif().get(0x0112, 1) in _EXIF_TRANSPOSED
    s = _draft_scale(w, h, size, policy) if draft else 1
    full = (h, w) if not transposed else (w, h)  # displayed (height, width)
    w, h = -(-w // s), -(-h // s)  # the size Pillow decodes at
    if transposed:
        w, h = h, w
    if policy == "crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        roi = (top * s, left * s, min((top + side) * s, full[0]), min((left + side) * s, full[1]))
        return Plan(roi, (size, size), (0, 0))
    if policy == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        return Plan((0.0, 0.0, float(full[0]), float(full[1])), (nh, nw), ((size - nh) // 2, (size - nw) // 2))
    raise ValueError(f"cache.resize_policy={policy!r}: expected 'crop' or 'pad'")


def _draft_scale(w: int, h: int, size: int, policy: str) -> int:
    """The DCT scale (1, 2, 4, 8) Pillow's JPEG draft picks for decode_resized's request (its JpegImageFile.draft)."""
    scale = size / (min(w, h) if policy == "crop" else max(w, h))
    if scale >= 0.5:
        return 1
    rw, rh = max(1, int(w * scale + 1)), max(1, int(h * scale + 1))
    fit = min(w // rw, h // rh)
    return next(a for a in (8, 4, 2, 1) if fit >= a)


class DaliDecoder:
    """One DALI pipeline (built on first use), fed a batch of encoded files at a time."""

    def __init__(self, size: int, policy: str, device: str = "cpu", hw_decoder_load: float = 0.0,
                 threads: int = 1, device_id: Optional[int] = None, draft: bool = True):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI decode device {device!r}: expected 'cpu' or 'mixed'")
        self.size, self.policy, self.device, self.hw_decoder_load = size, policy, device, hw_decoder_load
        self.draft = draft  # for the files the PIL path decodes (cache.draft)
        self.threads = max(1, threads)
        self.device_id = device_id if device_id is not None or device == "cpu" else 0  # CPU-only: no device at all
        self._pipe = None

    @property
    def tag(self) -> str:
        """What decoded the pixels, as metadata.json and a resumed build's pin record it."""
        return f"dali-{self.device}" + (f"-hw{self.hw_decoder_load:g}" if self.device == "mixed" else "")

    def __call__(self, paths: list[str]) -> list[Result]:
        out: list[Optional[Result]] = [None] * len(paths)
        plans: list[tuple[int, Plan, np.ndarray]] = []
        for i, path in enumerate(paths):
            try:
                p = plan(path, self.size, self.policy, self.draft)
                encoded = np.fromfile(path, dtype=np.uint8) if p is not None else None
            except Exception:  # noqa: BLE001 -- unreadable header or file: the PIL path names the reason
                p = encoded = None
            # No end-of-image marker: truncated (or trailing bytes). libjpeg-turbo would fill the rest with grey
            # where Pillow raises, so Pillow decides (and names the reason of a reject).
            if p is None or encoded[-2:].tobytes() != b"\xff\xd9":
                out[i] = _pil(path, self.size, self.policy, self.draft)
            else:
                plans.append((i, p, encoded))
        for b in range(0, len(plans), BATCH):
            batch = plans[b:b + BATCH]
            try:
                images = self._run([e for _, _, e in batch], [p for _, p, _ in batch])
            except Exception:  # noqa: BLE001 -- a bad file fails DALI's whole batch: PIL decodes it, naming the culprit
                self._pipe = None  # a pipeline that raised is not reused
                images = [_pil(paths[i], self.size, self.policy, self.draft) for i, _, _ in batch]
            for (i, _, _), img in zip(batch, images):
                out[i] = img
        return out  # type: ignore[return-value]

    def _run(self, encoded: list[np.ndarray], plans: list[Plan]) -> list[np.ndarray]:
        if self._pipe is None:
            self._pipe = self._build()
        f32 = lambda rows: [np.asarray(r, np.float32) for r in rows]  # noqa: E731
        self._pipe.feed_input("encoded", encoded)
        self._pipe.feed_input("roi_start", f32([p.roi[:2] for p in plans]))
        self._pipe.feed_input("roi_end", f32([p.roi[2:] for p in plans]))
        self._pipe.feed_input("out_size", f32([p.out for p in plans]))
        self._pipe.feed_input("anchor", f32([(-p.at[0], -p.at[1]) for p in plans]))
        (images,) = self._pipe.run()
        if self.device == "mixed":
            images = images.as_cpu()
        return [np.array(images[j], dtype=np.uint8) for j in range(len(encoded))]

    def _build(self):
        from engine.data.dali.pipelines import import_dali

        pipeline_def, fn, types = import_dali()
        size, op = self.size, "gpu" if self.device == "mixed" else "cpu"
        decoder_kw = {"hw_decoder_load": float(self.hw_decoder_load)} if self.device == "mixed" else {}

        @pipeline_def(batch_size=BATCH, num_threads=self.threads, device_id=self.device_id, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False)
        def _pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT)
            out_size = fn.external_source(name="out_size", dtype=types.FLOAT)
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
            images = fn.decoders.image(encoded, device=self.device, output_type=types.RGB, **decoder_kw)
            images = fn.resize(images, device=op, size=out_size, roi_start=roi_start, roi_end=roi_end,
                               interp_type=types.INTERP_LANCZOS3, antialias=True)
            # pad: the fitted image at (top, left) of a size x size canvas of PAD_FILL; crop: already size x size
            return fn.slice(images, anchor, np.array([size, size], np.float32), axes=[0, 1], device=op, normalized_anchor=False, normalized_shape=False,
                            out_of_bounds_policy="pad", fill_values=list(PAD_FILL))

        pipe = _pipe()
        pipe.build()
        return pipe


def _pil(path: str, size: int, policy: str, draft: bool) -> Result:
    try:
        return decode_resized(path, size, policy, draft)
    except Exception as e:  # noqa: BLE001 -- the writer turns it into a reject with this reason
        return e


def chunk_decoder(choice: dict, size: int, policy: str, draft: bool, threads: int = 1):
    """The writer's decode of a chunk of paths -> [array or exception], for ``hardware.choose_cache_decoder``'s
    ``choice``: Pillow file by file, or one DaliDecoder (built in the calling worker process)."""
    if choice["decoder"] == "pil":
        return lambda paths: [_pil(p, size, policy, draft) for p in paths]
    return DaliDecoder(size, policy, choice["device"], choice.get("hw_decoder_load", 0.0), threads, draft=draft)


def decoder_tag(choice: dict) -> str:
    """'pil', 'dali-cpu' or 'dali-mixed-hw0.75': pinned by a partial build (a resume decodes with the same) and
    recorded in metadata.json."""
    if choice["decoder"] == "pil":
        return "pil"
    return DaliDecoder(8, "crop", choice["device"], choice.get("hw_decoder_load", 0.0)).tag
