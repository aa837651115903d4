"""The PIL loader (loader.backend=pil) decodes colours exactly as the cache does, so a model sees one image whichever
backend fed it (16-bit greyscale scaled not clipped, transparency over white, palettes, EXIF orientation)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.data.cache.decode import decode_resized
from engine.data.pil_loader import decode_rgb


def test_pil_backend_colours_match_the_cache(tmp_path):
    side = 48
    ramp = np.linspace(0, 65535, side * side).reshape(side, side).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")  # 16-bit greyscale (microscopy, radiology)
    rgba = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (12, 12, 36, 36))
    rgba.save(tmp_path / "logo.png")
    pal = Image.new("P", (side, side), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, side // 2, side, side))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png", transparency=0)
    for name in ("gray16.png", "logo.png", "palette.png"):
        path = str(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(decode_rgb(path)), decode_resized(path, side, "crop", False), err_msg=name)
    assert 120 < np.asarray(decode_rgb(str(tmp_path / "gray16.png"))).mean() < 135  # not washed out to white
    assert (np.asarray(decode_rgb(str(tmp_path / "logo.png")))[0, 0] == 255).all()  # transparent -> white
