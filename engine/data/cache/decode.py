"""Decode one image file to the cache's stored form: RGB uint8 [S, S, 3].

Contract: ``decode_resized(path, size, policy, draft)`` -> np.uint8 [size, size, 3], HWC,
RGB, EXIF orientation applied. The same function fills the cache and is what
tests compare the cache against.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

RESAMPLE = Image.Resampling.LANCZOS  # antialiased; the cache is built once, so quality over speed
REDUCING_GAP = 3.0  # Pillow box-reduces first when the source is > 3x the target (non-JPEG fast path)
PAD_FILL = (0, 0, 0)  # "pad" policy border colour
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white, as image viewers do
UPSCALE_WARNING = 4.0  # a source blown up more than this (a thumbnail, a 1x1 placeholder) is reported


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB with the colours a viewer would show.

    CMYK JPEGs (incl. Adobe's inverted ones) are handled by Pillow's decoder;
    16-bit and float greyscale are scaled, not clipped; alpha (RGBA, LA,
    palette with transparency) is composited over ``ALPHA_BACKGROUND``.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def decode_resized(path: str, size: int, policy: str = "crop", draft: bool = True) -> np.ndarray:
    """Decode ``path`` and resize it to a ``size`` x ``size`` RGB array.

    crop: scale the shorter side to ``size`` and keep the centre square;
    pad: fit the whole image inside the square, centred on ``PAD_FILL``.
    With ``draft``, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    that still covers the target, which is most of the speed-up.
    """
    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            w, h = im.size
            scale = size / (min(w, h) if policy == "crop" else max(w, h))
            if scale < 0.5:  # draft only ever shrinks by powers of two, never below the request
                im.draft("RGB", (max(1, int(w * scale + 1)), max(1, int(h * scale + 1))))
        im = ImageOps.exif_transpose(im)
        im = to_rgb(im)
        w, h = im.size
        upscale = size / (min(w, h) if policy == "crop" else max(w, h))
        if upscale > UPSCALE_WARNING:  # decodes fine, but holds next to no picture: a placeholder or broken export?
            log.warning("%s: %dx%d pixels, upscaled %.0fx to %dx%d", path, w, h, upscale, size, size)
        if policy == "crop":
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            out = im.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side), reducing_gap=REDUCING_GAP)
        elif policy == "pad":
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            out = Image.new("RGB", (size, size), PAD_FILL)
            out.paste(im.resize((nw, nh), RESAMPLE, reducing_gap=REDUCING_GAP), ((size - nw) // 2, (size - nh) // 2))
        else:
            raise ValueError(f"cache.resize_policy={policy!r}: expected 'crop' or 'pad'")
        arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"{path}: decoded to shape {arr.shape}, expected {(size, size, 3)}")
    return arr
