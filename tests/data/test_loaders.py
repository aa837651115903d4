"""Every registered loader backend, built by name on tiny data (the registry sweep, as for backbones and fusers)."""
from __future__ import annotations

import pytest
import torch

from engine import optional
from engine.data.loaders import LOADER_BACKENDS, create_loader
from tests.data.conftest import make_cfg, make_ctx

NEEDS_CACHE = {"cache", "dali_cache"}  # backends that read the decode cache rather than the JPEGs


@pytest.mark.parametrize("backend", LOADER_BACKENDS.names())
def test_every_backend_builds_and_serves_each_sample_once(backend, dataset, tmp_path):
    if backend.startswith("dali") and not optional.has_dali():
        pytest.skip(f"loader.backend={backend} needs nvidia-dali ({optional.install_hint('dali')})")
    cfg = make_cfg(dataset, tmp_path / "cache", f"--loader.backend={backend}", "--loader.num_workers=1",
                   "--data.image_size=32")
    ctx = make_ctx(cfg)
    if backend in NEEDS_CACHE:
        from engine.data.cache import build_cache

        build_cache(cfg, ctx, "val", progress=False)
    loader = create_loader(cfg, ctx, "val", train=False)
    batches = list(loader)
    seen = torch.cat([b.index for b in batches]).tolist()
    assert sorted(seen) == sorted(ctx.split("val").rows.tolist())
    first = batches[0]
    assert first.images.shape[0] == len(first.index) == len(first.labels) <= cfg.loader.batch_size
