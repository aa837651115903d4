"""cache.storage=jpeg: records stored as JPEGs, decoded by the loader; same contract as raw records, within JPEG loss."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from tests.data.conftest import assert_resumes_exactly, make_cfg, make_ctx, write_dataset
from engine.data.cache import CacheError, CacheReader, build_cache, open_cache, verify_cache
from engine.data.cache.decode_jpeg import TOLERANCE, DaliRecords, PillowRecords
from engine.data.loaders import create_loader

JPEG = ("--cache.storage=jpeg", "--cache.jpeg_quality=90")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same data cached raw and as JPEG (train and val), in one cache.dir."""
    root = tmp_path_factory.mktemp("jpeg")
    manifest = write_dataset(root / "data", n_train=30, n_val=11, n_test=2)
    raw = make_cfg(manifest, root / "cache", "--cache.stored_size=48")
    jpeg = make_cfg(manifest, root / "cache", "--cache.stored_size=48", *JPEG)
    ctx = make_ctx(raw)
    summaries = {}
    for name, cfg in (("raw", raw), ("jpeg", jpeg)):
        for split in ("train", "val"):
            summaries[name, split] = build_cache(cfg, ctx, split, progress=False)
    return raw, jpeg, ctx, summaries


def _close(decoded: np.ndarray, raw: np.ndarray) -> None:
    diff = np.abs(decoded.astype(np.int16) - raw.astype(np.int16))
    assert diff.mean() <= TOLERANCE["mean_abs"] and (diff > 16).mean() <= TOLERANCE["frac_over_16"], \
        (diff.mean(), (diff > 16).mean())


def test_jpeg_records_hold_the_raw_pixels_within_jpeg_loss_and_are_smaller(built):
    raw_cfg, jpeg_cfg, ctx, summaries = built
    raw, jpeg = open_cache(raw_cfg, ctx, "train"), open_cache(jpeg_cfg, ctx, "train")
    assert (raw.storage, jpeg.storage) == ("raw", "jpeg") and raw.folder != jpeg.folder
    assert summaries["jpeg", "train"].decoded == 30  # decoded from the photos, not taken from the raw cache
    assert (jpeg.folder / "images.jpg").is_file() and not (jpeg.folder / "images.u8").exists()
    assert jpeg.meta["storage"] == "jpeg" and jpeg.meta["jpeg_quality"] == 90 and jpeg.key["jpeg_quality"] == 90
    assert "storage" not in raw.key  # raw caches keep the key (and folder) they had before storage existed
    assert jpeg.meta["encoded_bytes"] < 0.5 * (raw.folder / "images.u8").stat().st_size
    for i in range(raw.count):
        img = jpeg.record(i)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        _close(img, raw.record(i))
    np.testing.assert_array_equal(jpeg.pixels(np.arange(5)), np.stack([jpeg.record(i) for i in range(5)]))


def test_jpeg_loader_batches_match_raw_in_order_fields_and_within_jpeg_loss(built):
    raw_cfg, jpeg_cfg, ctx, _ = built
    for split, train in (("train", True), ("val", False)):
        for rank in (0, 1):
            a = list(create_loader(raw_cfg, ctx, split, train, rank, 2))
            b = list(create_loader(jpeg_cfg, ctx, split, train, rank, 2))
            assert len(a) == len(b) > 0
            for x, y in zip(a, b):
                assert y.images.shape == x.images.shape and y.images.dtype == x.images.dtype and y.images.is_contiguous()
                assert x.index.tolist() == y.index.tolist() and x.labels.tolist() == y.labels.tolist()
                assert bool((x.numeric == y.numeric).all())
                _close(y.images.numpy(), x.images.numpy())


def test_jpeg_loader_is_deterministic_and_resumes_exactly(built):
    _, jpeg_cfg, ctx, _ = built
    first = [b.images.clone() for b in create_loader(jpeg_cfg, ctx, "val", False)]
    again = [b.images for b in create_loader(jpeg_cfg, ctx, "val", False)]
    assert all(bool((x == y).all()) for x, y in zip(first, again))
    assert_resumes_exactly(jpeg_cfg, ctx, epoch=1, after=2)


def test_storage_and_quality_are_part_of_the_key_and_pixels_never_mix(built, tmp_path):
    raw_cfg, jpeg_cfg, ctx, _ = built
    other_q = make_cfg(raw_cfg.data.manifest, raw_cfg.cache.dir, "--cache.stored_size=48", "--cache.storage=jpeg",
                       "--cache.jpeg_quality=50")
    with pytest.raises(CacheError, match=r"jpeg_quality: cache has 90, settings say 50.*--cache.jpeg_quality=50"):
        open_cache(other_q, ctx, "val")
    # other tabular settings over jpeg records: the jpeg pixels are reused (hard-linked), never the raw ones
    fewer = make_cfg(raw_cfg.data.manifest, raw_cfg.cache.dir, "--cache.stored_size=48", *JPEG,
                     "--data.numeric_columns=[]")
    summary = build_cache(fewer, make_ctx(fewer), "val", progress=False)
    jpeg_val = open_cache(jpeg_cfg, ctx, "val").folder
    assert summary.pixels_from == jpeg_val
    assert os.path.samefile(summary.folder / "images.jpg", jpeg_val / "images.jpg")
    assert not (summary.folder / "images.u8").exists()
    with pytest.raises(ValueError, match="jpeg_quality must be in 1-100"):
        make_cfg(raw_cfg.data.manifest, tmp_path, "--cache.jpeg_quality=0")


def test_verify_and_the_epoch_check_catch_a_flipped_jpeg_byte(tmp_path):
    manifest = write_dataset(tmp_path / "data")
    cfg = make_cfg(manifest, tmp_path / "cache", *JPEG)
    ctx = make_ctx(cfg)
    build_cache(cfg, ctx, "train", progress=False)
    reader = open_cache(cfg, ctx, "train")
    assert not verify_cache(reader.folder).bad
    at = int(reader.offsets[5]) + 40  # inside record 5's entropy-coded data
    path = reader.folder / "images.jpg"
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [b["record"] for b in verify_cache(reader.folder).bad] == [5]
    with pytest.raises(CacheError, match=r"records \[5\] no longer match their checksums"):
        reader.check_intact(samples=len(reader.good))


@pytest.mark.skipif(importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None,
                    reason="DALI not installed")
def test_dali_decodes_the_records_as_pillow_does(built):
    """The GPU decoder's pipeline, run with DALI's CPU operators (device_id=None): same records, same layout."""
    _, jpeg_cfg, ctx, _ = built
    reader = open_cache(jpeg_cfg, ctx, "train")
    encoded = reader.encoded_records(np.arange(reader.count))
    a = np.zeros((reader.count, reader.record_bytes), np.uint8)
    b = np.zeros_like(a)
    PillowRecords(reader.size).into(encoded, a)
    DaliRecords(reader.size, "cpu", threads=2).into(encoded, b)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05  # both libjpeg-turbo: IDCT/upsampling rounding at most


@pytest.mark.skipif(importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None,
                    reason="DALI not installed")
def test_dali_cache_backend_decodes_jpeg_records_in_its_pipeline(built):
    """loader.backend=dali_cache over a jpeg cache: the JPEGs go into the pipeline encoded and are decoded there
    (nvJPEG on a GPU, DALI's CPU decoder here); batches as from the raw cache, within JPEG loss."""
    raw_cfg, jpeg_cfg, ctx, _ = built
    over = ("--loader.backend=dali_cache", "--cache.stored_size=48", "--data.image_size=32")
    raw = make_cfg(raw_cfg.data.manifest, raw_cfg.cache.dir, *over)
    jpeg = make_cfg(raw_cfg.data.manifest, raw_cfg.cache.dir, *over, *JPEG)
    loader = create_loader(jpeg, ctx, "val", False)
    loader.reader.pixels = lambda records: pytest.fail("jpeg records were decoded outside the DALI pipeline")
    a, b = list(create_loader(raw, ctx, "val", False)), list(loader)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.index.tolist() == y.index.tolist() and y.images.shape == x.images.shape
        assert y.images.dtype == x.images.dtype and y.images.shape[1] == 3  # normalised NCHW, as from raw records
        assert float((x.images - y.images).abs().mean()) < 0.1  # JPEG loss, in normalised units (~1/50 of a std)


def test_a_subset_served_from_a_jpeg_cache_hands_out_its_own_records(built):
    """A seeded subset is served from the full jpeg cache (selection.py): the encoded records handed to a
    decoder (DALI's pipeline, nvJPEG) are the subset's, as its decoded pixels are."""
    raw_cfg, jpeg_cfg, _, _ = built
    sub = make_cfg(raw_cfg.data.manifest, raw_cfg.cache.dir, "--cache.stored_size=48", *JPEG,
                   "--data.max_val_samples=5")
    reader = open_cache(sub, make_ctx(sub), "val")
    assert reader.count == 5 and reader.storage == "jpeg"
    records = np.arange(5)
    np.testing.assert_array_equal(reader.pixels(records), np.stack([reader.record(i) for i in records]))
    full = CacheReader(reader.folder)  # the cover itself
    for i, data in zip(records, reader.encoded_records(records)):
        assert data.tobytes() == full.payload(int(reader.pixel_index[i])).tobytes()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cache_loader_decodes_jpeg_records_with_nvjpeg_into_device_memory(built):
    """On a card the cache loader hands the JPEGs to DALI's nvJPEG (decode_jpeg.DaliRecords, mixed) and yields
    device batches: same order and fields as the raw cache's, pixels within JPEG loss of the raw records."""
    raw_cfg, jpeg_cfg, ctx, _ = built
    a = list(create_loader(raw_cfg, ctx, "train", True, 0, 2))
    loader = create_loader(jpeg_cfg, ctx, "train", True, 0, 2)
    assert isinstance(loader.reader.jpeg_decoder, DaliRecords) and loader.reader.jpeg_decoder.device == "mixed"
    b = list(loader)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert y.images.is_cuda and y.images.dtype == x.images.dtype and y.images.shape == x.images.shape
        assert x.index.tolist() == y.index.tolist() and x.labels.tolist() == y.labels.tolist()
        _close(y.images.cpu().numpy(), x.images.cpu().numpy())
