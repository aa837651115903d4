"""DALI backends on DALI's CPU operators: pairing, sharding, coverage, bad files, a training smoke run.

The test images are solid-colour JPEGs whose dominant channel is the class, so
every sample's label can be read back from its pixels after any augmentation.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

from engine import hardware  # noqa: E402
from engine.data.cache.reader import CacheReader  # noqa: E402
from engine.data.config import DataConfig  # noqa: E402
from engine.data.dali.bad_images import BadImageError  # noqa: E402
from engine.data.dali.loader import DaliCacheLoader, DaliLoader  # noqa: E402
from engine.data.dali.pipelines import DecodeSettings  # noqa: E402
from engine.data.context import DataContext  # noqa: E402
from engine.data.loader_base import ShardedLoader  # noqa: E402
from kernels.config import AugmentConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 30, 210)]  # class k has dominant channel k
AUG = AugmentConfig(scale=(0.3, 1.0), brightness=0.3, contrast=0.3, saturation=0.3, hue=0.0)
CPU = DecodeSettings("cpu")
SIZE = 16


def write_dataset(folder: Path, n_train: int = 23, n_val: int = 11, corrupt: tuple[str, int] | None = None) -> Path:
    """Solid-colour JPEGs (varied sizes and aspect ratios) and a manifest; label = colour index."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = int(rng.integers(len(COLOURS)))
            w, h = int(rng.integers(24, 64)), int(rng.integers(24, 64))
            rel = f"{split}/{i:04d}.jpg"
            Image.new("RGB", (w, h), COLOURS[label]).save(folder / rel, quality=90)
            rows.append({"image": rel, "label": label, "split": split, "age": float(i), "site": "a"})
    if corrupt:
        split, i = corrupt
        (folder / f"{split}/{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG body")
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def context(manifest: Path, on_bad_image: str = "error") -> DataContext:
    cfg = DataConfig(manifest=str(manifest), text_column=None, numeric_columns=["age"], categorical_columns=["site"],
                     image_size=SIZE, on_bad_image=on_bad_image)
    return DataContext(cfg, seed=0, text_encoder=None, text_max_length=0)


def pixel_class(images: torch.Tensor) -> np.ndarray:
    """Undo normalisation, then the dominant channel of each image's mean colour."""
    mean = torch.tensor(AUG.mean).view(1, 3, 1, 1)
    std = torch.tensor(AUG.std).view(1, 3, 1, 1)
    rgb = images.float() * std + mean
    return rgb.mean(dim=(2, 3)).argmax(dim=1).numpy()


def dali_loader(data, train: bool, rank: int, world: int, bs: int = 4, **kw) -> DaliLoader:
    return DaliLoader(data, aug=AUG, size=SIZE, batch_size=bs, train=train, rank=rank, world=world, seed=3, settings=CPU,
                      num_threads=1, prefetch=2, **kw)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return context(write_dataset(tmp_path_factory.mktemp("colours")))


def check_batch(batch, data) -> None:
    assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (3, SIZE, SIZE)
    assert batch.images.is_contiguous()  # NCHW
    np.testing.assert_array_equal(pixel_class(batch.images), batch.labels.numpy(), err_msg="image/label pairing drifted")
    pos = np.searchsorted(data.rows, batch.index.numpy())
    np.testing.assert_array_equal(batch.labels.numpy(), data.labels[pos])
    np.testing.assert_array_equal(batch.numeric.numpy(), data.numeric[pos])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_pairing_global_order_and_shards(ctx, world):
    data, bs = ctx.split("train"), 3
    per_rank_batches = len(data) // (bs * world)
    seen_by_epoch: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for rank in range(world):
        loader = dali_loader(data, True, rank, world, bs)
        reference = ShardedLoader(len(data), batch_size=bs, train=True, rank=rank, world=world, seed=3)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            reference.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) == per_rank_batches  # equal on every rank (DROP)
            idx = np.concatenate([b.index.numpy() for b in batches])
            np.testing.assert_array_equal(idx, data.rows[reference.positions()])  # the sampler's global order
            for b in batches:
                assert b.size == bs
                check_batch(b, data)
            seen_by_epoch[epoch].append(idx)
    for epoch, shards in seen_by_epoch.items():
        allidx = np.concatenate(shards)
        assert len(np.unique(allidx)) == len(allidx), f"epoch {epoch}: ranks overlap"
    assert not np.array_equal(np.concatenate(seen_by_epoch[0]), np.concatenate(seen_by_epoch[1])), "no reshuffle"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_covers_every_sample_once(ctx, world):
    data, bs = ctx.split("val"), 4
    gathered, counts = [], []
    for rank in range(world):
        loader = dali_loader(data, False, rank, world, bs)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(loader)
        for b in batches:
            check_batch(b, data)
        gathered.append(np.concatenate([b.index.numpy() for b in batches]))
    assert len(set(counts)) == 1
    allidx = np.concatenate(gathered)
    assert len(allidx) == world * -(-len(data) // world)  # padded shards, equal length
    np.testing.assert_array_equal(np.unique(allidx), np.sort(data.rows))  # every row exactly once after de-dup


def test_resume_mid_epoch_continues_the_same_order(ctx):
    data = ctx.split("train")
    full = [b.index.numpy() for b in dali_loader(data, True, 0, 2)]
    loader = dali_loader(data, True, 0, 2)
    loader.load_state_dict({"epoch": 0, "batches_done": 1})
    rest = [b.index.numpy() for b in loader]
    np.testing.assert_array_equal(np.concatenate(rest), np.concatenate(full[1:]))


def test_corrupt_file_is_named(tmp_path):
    ctx = context(write_dataset(tmp_path, corrupt=("val", 6)))
    loader = dali_loader(ctx.split("val"), False, 0, 1)
    with pytest.raises(BadImageError, match=r"val/0006\.jpg.*manifest row"):
        list(loader)


def test_corrupt_file_skipped_and_listed(tmp_path):
    ctx = context(write_dataset(tmp_path, corrupt=("val", 6)), on_bad_image="skip")
    data = ctx.split("val")
    rejects = tmp_path / "run" / "rejects-dali-val.csv"
    loader = dali_loader(data, False, 0, 1, on_bad_image="skip", rejects_path=rejects)
    idx = np.concatenate([b.index.numpy() for b in loader])
    assert len(idx) == len(data) - 1 and int(data.rows[6]) not in idx
    listed = list(csv.DictReader(open(rejects)))
    assert [r["path"].endswith("val/0006.jpg") for r in listed] == [True]


class _FakeCache:
    """The cache reader's surface that DaliCacheLoader uses: fixed-stride uint8 records and fields."""

    def __init__(self, data, size: int = 24, stride: int = 4096):
        self.count, self.size, self.stride = len(data), size, stride
        self.record_bytes = size * size * 3
        self.images = np.zeros((self.count, stride), np.uint8)
        for i, label in enumerate(data.labels):
            self.images[i, : self.record_bytes] = np.broadcast_to(np.array(COLOURS[label], np.uint8), (size, size, 3)).ravel()
        self.good = np.arange(self.count)
        self.fields = {"rows": data.rows, "labels": data.labels, "input_ids": data.input_ids,
                       "attention_mask": data.attention_mask, "numeric": data.numeric, "categorical": data.categorical}
        self.captions = {}  # a cache without data.group_captions

    batch_fields = CacheReader.batch_fields  # the real naming of fields into a Batch (it reads .fields, .captions)
    gather, pixels = CacheReader.gather, CacheReader.pixels  # the real read of records (it reads .images, .stride)


@pytest.mark.parametrize("train", [True, False])
def test_dali_cache_pipeline(ctx, train):
    data = ctx.split("train")
    reader = _FakeCache(data)
    reader.good = np.delete(reader.good, 5)  # a rejected record is never served
    world, bs = 2, 4
    got = []
    for rank in range(world):
        loader = DaliCacheLoader(reader, aug=AUG, size=SIZE, batch_size=bs, train=train, rank=rank, world=world, seed=3,
                                 settings=CPU, num_threads=1, prefetch=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:
            check_batch(b, data)
        got.append(np.concatenate([b.index.numpy() for b in batches]))
    allidx = np.concatenate(got)
    assert int(data.rows[5]) not in allidx
    if train:
        assert len(np.unique(allidx)) == len(allidx)
    else:
        np.testing.assert_array_equal(np.unique(allidx), np.sort(np.delete(data.rows, 5)))


def test_dali_cache_backend_on_a_real_cache(tmp_path):
    """create_loader(backend=dali_cache) on a cache built by the cache writer: pairing, coverage."""
    from engine.config import load_config
    from engine.data.cache import build_cache
    from engine.data.loaders import create_loader

    manifest = write_dataset(tmp_path / "data", n_train=12, n_val=7)
    cfg = load_config(None, [f"--data.manifest={manifest}", f"--cache.dir={tmp_path / 'cache'}", "--data.text_column=null",
                             "--model.text_encoder=null", "--data.numeric_columns=[age]", "--data.categorical_columns=[site]",
                             f"--data.image_size={SIZE}", "--cache.stored_size=24", "--cache.workers=1",
                             "--loader.backend=dali_cache", "--loader.batch_size=4", "--loader.num_workers=1",
                             "--augment.hue=0.0", "--augment.saturation=0.3"])
    ctx = DataContext(cfg.data, cfg.run.seed, None, 0)
    for split, train in (("train", True), ("val", False)):
        build_cache(cfg, ctx, split, progress=False)
        data = ctx.split(split)
        loader = create_loader(cfg, ctx, split, train)
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:
            check_batch(b, data)
        idx = np.concatenate([b.index.numpy() for b in batches])
        expected = len(data) // 4 * 4 if train else len(data)
        assert len(idx) == expected and len(np.unique(idx)) == expected


def test_decode_settings_follow_the_card(monkeypatch):
    from engine.config import Config
    from engine.data.dali.loader import decode_settings

    cfg = Config()
    for cap, device, load, dtype in (("cpu", "cpu", 0.0, None), ("8.0", "mixed", 0.75, torch.bfloat16),
                                     ("7.0", "mixed", 0.0, None)):
        monkeypatch.setenv(hardware.FORCE_ENV, cap)
        settings, out_dtype = decode_settings(cfg, hardware.device_info())
        assert (settings.device, settings.hw_decoder_load, out_dtype) == (device, load, dtype)
        assert settings.fp16 == (cap == "7.0")  # fp16 training on Volta/Turing: DALI emits float16
    cfg.loader.dali_hw_decoder_load = 0.3
    monkeypatch.setenv(hardware.FORCE_ENV, "9.0")
    assert decode_settings(cfg, hardware.device_info())[0].hw_decoder_load == 0.3
    s = DecodeSettings("mixed", 0.5, prealloc_mb=64)
    assert s.decoder_kwargs() == {"hw_decoder_load": 0.5, "device_memory_padding": 64 << 20, "host_memory_padding": 64 << 20}
    assert DecodeSettings("cpu", 0.5, 64).decoder_kwargs() == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_decode_yields_cuda_tensors(ctx):
    settings = DecodeSettings("mixed", hardware.dali_decoder_defaults(hardware.device_info())["hw_decoder_load"], 16)
    loader = DaliLoader(ctx.split("train"), aug=AUG, size=SIZE, batch_size=4, train=True, rank=0, world=1, seed=3,
                        settings=settings, num_threads=2,
                        prefetch=2, device_id=torch.cuda.current_device())
    for b in loader:
        assert b.images.is_cuda and b.images.shape[1:] == (3, SIZE, SIZE)
        np.testing.assert_array_equal(pixel_class(b.images.cpu()), b.labels.numpy())


@pytest.mark.slow
def test_training_smoke(tmp_path):
    data = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "tools/make_demo_data.py"), str(data), "--train", "16", "--val", "8",
                    "--test", "8"], check=True, env=env, cwd=ROOT)
    cmd = [sys.executable, str(ROOT / "engine/train.py"), "--config", str(ROOT / "configs/demo.yaml"), "--loader.backend=dali",
           f"--data.manifest={data / 'manifest.csv'}", f"--run.output_dir={tmp_path / 'runs'}", "--train.max_steps_per_epoch=2",
           "--train.epochs=1", "--data.image_size=32", "--loader.batch_size=8", "--loader.num_workers=1"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list((tmp_path / "runs").glob("*/summary.json"))


def test_missing_dali_says_what_to_install(monkeypatch):
    from engine.data.dali.pipelines import import_dali

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `from nvidia.dali import ...` fail
    with pytest.raises(ImportError, match="pip install nvidia-dali"):
        import_dali()
