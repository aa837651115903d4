"""A cache never serves pixels other than its images': replaced photos, a damaged file, two builders at once."""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from engine.data.cache import CacheError, build_cache, open_cache
from engine.data.loaders import create_loader
from tests.data.conftest import make_cfg, make_ctx


def _build(cfg, split="train"):
    return build_cache(cfg, make_ctx(cfg), split, progress=False)


def test_an_image_replaced_in_place_is_noticed_on_open_and_rebuilt(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache")
    _build(cfg)
    ctx = make_ctx(cfg)
    photo = ctx.split("train").paths[3]
    Image.fromarray(np.zeros((90, 70, 3), np.uint8)).save(photo, quality=90)  # fixed by hand, same name
    with pytest.raises(CacheError, match=rf"stale pixels: image files changed.*{os.path.basename(photo)}.*build_cache\.py"):
        open_cache(cfg, make_ctx(cfg), "train")
    summary = _build(cfg)
    assert not summary.up_to_date and summary.decoded == len(ctx.split("train"))
    reader = open_cache(cfg, make_ctx(cfg), "train")
    assert reader.record(3).max() == 0  # the new, black photo
    assert _build(cfg).up_to_date


def test_a_cache_damaged_while_in_use_is_named_not_a_sigbus(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache")
    _build(cfg)
    ctx = make_ctx(cfg)
    loader = create_loader(cfg, ctx, "train", True)
    assert len(list(loader)) == len(loader)  # epoch 1 reads fine
    images = loader.reader.folder / "images.u8"
    os.truncate(images, images.stat().st_size // 2)  # a rebuild or a full disk elsewhere cut the file
    with pytest.raises(CacheError, match=rf"{images} is \d+ bytes, was \d+ since it was opened.*build_cache\.py"):
        next(iter(loader))


def test_flipped_bytes_fail_the_sampled_checksums(dataset, tmp_path):
    cfg = make_cfg(dataset, tmp_path / "cache")
    _build(cfg)
    reader = open_cache(cfg, make_ctx(cfg), "train")
    reader.check_intact(samples=len(reader.good))
    with open(reader.folder / "images.u8", "r+b") as f:  # same size and inode: only the checksums can tell
        f.seek(5 * reader.stride)
        f.write(bytes(16))
    os.utime(reader.folder / "images.u8", ns=reader._identity[3:4] * 2)
    with pytest.raises(CacheError, match=r"records \[5\] no longer match their checksums"):
        reader.check_intact(samples=len(reader.good))


def test_a_second_builder_waits_and_says_who_holds_the_cache(dataset, tmp_path, caplog):
    import subprocess
    import sys

    cfg = make_cfg(dataset, tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    first = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                              "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                              str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)  # stands in for a first build
    assert first.stdout.readline().strip() == "locked"
    result = {}
    try:
        with caplog.at_level(logging.WARNING):
            second = threading.Thread(target=lambda: result.update(summary=_build(cfg)))
            second.start()
            deadline = time.monotonic() + 30
            while "waiting for" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            assert second.is_alive() and "summary" not in result  # it waits rather than building alongside
    finally:
        first.kill()
        first.wait()
    second.join(120)
    assert f"waiting for the build lock on {tmp_path / 'cache'}: another cache build holds it (pid {first.pid}: " in caplog.text
    assert result["summary"].good == len(make_ctx(cfg).split("train"))
