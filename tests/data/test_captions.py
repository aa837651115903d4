"""Several captions per image (data.group_captions): one sample per image, one cached record per image, one
caption drawn per epoch for training (a pure function of seed, epoch and image), all of them for evaluation."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.data.conftest import make_cfg, make_ctx
from engine.data.cache import build_cache, cache_key, open_cache
from engine.data.context import draw_captions
from engine.data.loaders import create_loader
from engine.data.manifest import ManifestError, load_manifest


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, tiny_text_encoder):
    """Demo photos with 3 captions each, then some captions removed so images have 1-3 (K = 3)."""
    from make_demo_data import make_demo_data

    root = tmp_path_factory.mktemp("captions")
    manifest = make_demo_data(root / "data", 12, 5, 0, seed=0, workers=2, sizes=[(64, 48), (48, 64)], captions=3)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [r for i, r in enumerate(rows) if not (i in (1, 2) or i == 10)]  # image 0: 1 caption, image 3: 2
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = make_cfg(manifest, root / "cache", "--data.group_captions=true", f"--model.text_encoder={tiny_text_encoder}",
                   "--model.text_max_length=24", "--loader.num_workers=0")
    ctx = make_ctx(cfg)
    for split in ("train", "val"):
        build_cache(cfg, ctx, split, progress=False)
    return cfg, ctx, rows


def test_split_is_one_sample_per_image_with_all_captions(captioned):
    cfg, ctx, rows = captioned
    data = ctx.split("train")
    images = list(dict.fromkeys(r["image"] for r in rows if r["split"] == "train"))
    assert len(data) == len(images) == 12 and data.caption_ids.shape == (12, 3, 24)
    assert [p.endswith(img) for p, img in zip(data.paths, images)] == [True] * 12
    assert data.caption_count[0] == 1 and data.caption_count[3] == 2 and data.caption_count[1] == 3
    m = ctx.manifest
    tok = ctx.tokenizer
    for p in range(len(data)):
        k = data.caption_count[p]
        assert data.rows[p] == data.caption_rows[p, 0]
        assert {m.rows[i]["image"] for i in data.caption_rows[p, :k]} == {images[p]} and (data.caption_rows[p, k:] == -1).all()
        for j in range(k):  # each caption is the tokenised text of its own row
            text = m.rows[int(data.caption_rows[p, j])]["text"]
            ids = tok(text, truncation=True, max_length=24)["input_ids"]
            np.testing.assert_array_equal(data.caption_ids[p, j, : len(ids)], ids)
        assert (data.caption_ids[p, k:] == 0).all() and (data.caption_mask[p, k:] == 0).all()
    np.testing.assert_array_equal(data.input_ids, data.caption_ids[:, 0])
    assert (data.labels == m.labels[data.rows]).all()


def test_cache_keeps_one_record_per_image_and_the_captions(captioned):
    cfg, ctx, _ = captioned
    reader, data = open_cache(cfg, ctx, "train"), ctx.split("train")
    assert reader.count == len(data) == 12  # pixels decoded once per image, whatever its caption count
    for name in ("caption_ids", "caption_mask", "caption_count", "caption_rows"):
        np.testing.assert_array_equal(reader.captions[name], getattr(data, name))
    plain = make_cfg(cfg.data.manifest, cfg.cache.dir, f"--model.text_encoder={cfg.model.text_encoder}",
                     "--model.text_max_length=24")
    assert cache_key(plain, make_ctx(plain), "train").folder_name != cache_key(cfg, ctx, "train").folder_name
    assert "group_captions" not in cache_key(plain, make_ctx(plain), "train").to_dict()  # older caches keep their key


@pytest.mark.parametrize("backend", ["cache", "pil"])
def test_eval_batches_carry_every_caption(captioned, backend):
    cfg, ctx, _ = captioned
    cfg.loader.backend = backend
    data = ctx.split("val")
    seen = 0
    for b in create_loader(cfg, ctx, "val", False):
        p = np.searchsorted(data.rows, b.index.numpy())
        np.testing.assert_array_equal(b.captions_ids.numpy(), data.caption_ids[p])
        np.testing.assert_array_equal(b.captions_mask.numpy(), data.caption_mask[p])
        np.testing.assert_array_equal(b.caption_count.numpy(), data.caption_count[p])
        np.testing.assert_array_equal(b.input_ids.numpy(), data.caption_ids[p, 0])
        assert b.to("cpu").caption_count is not None
        seen += b.size
    assert seen == len(data)


def _train_tokens(cfg, ctx, epoch: int, rank: int = 0, world: int = 1) -> dict[int, np.ndarray]:
    loader = create_loader(cfg, ctx, "train", True, rank, world)
    loader.set_epoch(epoch)
    return {int(i): ids.numpy() for b in loader for i, ids in zip(b.index, b.input_ids)}


@pytest.mark.parametrize("backend", ["cache", "pil"])
def test_training_draws_one_caption_per_image_per_epoch(captioned, backend):
    cfg, ctx, _ = captioned
    cfg.loader.backend = backend
    data = ctx.split("train")
    for epoch in (0, 1):
        got = _train_tokens(cfg, ctx, epoch)
        assert len(got) == 12 and next(iter(create_loader(cfg, ctx, "train", True))).captions_ids is None
        for row, ids in got.items():
            p = int(np.flatnonzero(data.rows == row)[0])
            k = draw_captions(cfg.run.seed, epoch, np.array([row]), data.caption_count[p : p + 1])[0]
            np.testing.assert_array_equal(ids, data.caption_ids[p, k])


def test_caption_draw_is_a_pure_function_that_changes_with_the_epoch():
    rows, counts = np.arange(2000) * 7, np.full(2000, 5)
    a = draw_captions(0, 3, rows, counts)
    np.testing.assert_array_equal(a, draw_captions(0, 3, rows, counts))
    np.testing.assert_array_equal(a[100:200], draw_captions(0, 3, rows[100:200], counts[100:200]))  # any shard, any order
    assert ((a >= 0) & (a < 5)).all() and set(np.bincount(a, minlength=5) > 300) == {True}  # about uniform
    assert (a != draw_captions(0, 4, rows, counts)).mean() > 0.7  # another epoch, other captions
    assert (a != draw_captions(1, 3, rows, counts)).mean() > 0.7  # another seed too
    assert (draw_captions(0, 3, rows, np.ones(2000, np.int64)) == 0).all()


def test_caption_draws_survive_sharding_and_mid_epoch_resume(captioned):
    cfg, ctx, _ = captioned
    cfg.loader.backend = "cache"
    one = _train_tokens(cfg, ctx, 2)
    two = {**_train_tokens(cfg, ctx, 2, 0, 2), **_train_tokens(cfg, ctx, 2, 1, 2)}  # each rank draws the same
    assert len(two) == 8 and all(np.array_equal(one[r], two[r]) for r in two)
    full = create_loader(cfg, ctx, "train", True)
    full.set_epoch(2)
    expected = [b.input_ids.clone() for b in full]
    part = create_loader(cfg, ctx, "train", True)
    part.set_epoch(2)
    next(iter(part))
    resumed = create_loader(cfg, ctx, "train", True)
    resumed.load_state_dict(part.state_dict())
    rest = [b.input_ids for b in resumed]
    assert len(rest) == len(expected) - 1 and all(np.array_equal(a, b) for a, b in zip(rest, expected[1:]))


def _manifest(tmp_path, rows) -> str:
    (tmp_path / "img").mkdir(exist_ok=True)
    for r in rows:
        (tmp_path / r[0]).write_bytes(b"x")
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "split"])
        w.writerows(rows)
    return str(path)


@pytest.mark.parametrize("column,values", [("label", ("cat", "dog")), ("split", ("train", "val"))])
def test_caption_rows_with_conflicting_labels_or_splits_are_refused(tmp_path, column, values):
    from engine.data.config import DataConfig

    rows = [["img/a.jpg", "a cat", "cat", "train"], ["img/b.jpg", "b", "dog", "val"], ["img/c.jpg", "c", "cat", "val"]]
    rows.append(["img/a.jpg", "another", values[1] if column == "label" else "cat", values[1] if column == "split" else "train"])
    path = _manifest(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"m\.csv: 1 images have caption rows with conflicting .*img/a\.jpg .*line 2.*line 5"):
        load_manifest(DataConfig(manifest=path, group_captions=True))
    load_manifest(DataConfig(manifest=path))  # one sample per row: only a warning, as before


def test_collate_and_device_moves_keep_absent_fields_none():
    import torch

    from engine.data.batch import Batch

    sample = {"images": torch.zeros(3, 4, 4), "input_ids": torch.zeros(5, dtype=torch.long),
              "attention_mask": torch.zeros(5, dtype=torch.long), "numeric": torch.zeros(1), "categorical": torch.zeros(1),
              "labels": torch.tensor(1), "index": torch.tensor(7), "captions_ids": None}
    b = Batch.collate([sample, {**sample, "index": torch.tensor(8)}])
    assert b.captions_ids is None and b.caption_count is None and b.index.tolist() == [7, 8]
    assert b.to("cpu").captions_ids is None and b.to("cpu").captions_mask is None


@pytest.mark.parametrize("train", [True, False])
def test_dali_cache_backend_serves_the_captions(captioned, train):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    from engine.data.dali.loader import DaliCacheLoader
    from engine.data.dali.pipelines import DecodeSettings
    from kernels.config import AugmentConfig

    cfg, ctx, _ = captioned
    split = "train" if train else "val"
    data = ctx.split(split)
    loader = DaliCacheLoader(open_cache(cfg, ctx, split), aug=AugmentConfig(hue=0.0), size=16, batch_size=4, train=train,
                             rank=0, world=1, seed=cfg.run.seed, settings=DecodeSettings("cpu"), num_threads=1)
    for b in loader:
        p = np.searchsorted(data.rows, b.index.numpy())
        if train:
            k = draw_captions(cfg.run.seed, 0, data.rows[p], data.caption_count[p])
            np.testing.assert_array_equal(b.input_ids.numpy(), data.caption_ids[p, k])
        else:
            np.testing.assert_array_equal(b.captions_ids.numpy(), data.caption_ids[p])
