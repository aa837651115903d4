"""``create_loader``: the one entry point from a config to a batch iterator, by backend name.

``LOADER_BACKENDS`` is the registry of ``loader.backend`` names, each a factory
``(cfg, ctx, split, train, rank, world, weights) -> ShardedLoader``; add one with
``@register_backend(name)``. The DALI ones import DALI only when built.
"""
from __future__ import annotations

from engine.data.context import DataContext
from engine.data.loader_base import ShardedLoader
from engine.data.sampling import class_weights
from engine.registry import Registry

LOADER_BACKENDS = Registry("loader.backend")
register_backend = LOADER_BACKENDS.register


def create_loader(cfg, ctx: DataContext, split: str, train: bool, rank: int = 0, world: int = 1) -> ShardedLoader:
    """A loader of ``split`` for this rank; ``cfg`` is the whole run Config."""
    factory = LOADER_BACKENDS[cfg.loader.backend]  # an unknown name: a ValueError listing the known ones
    weights = None
    data = ctx.split(split)
    if train and cfg.loader.balanced_sampling != "none":
        weights = class_weights(data.labels, cfg.loader.balanced_sampling)
    loader = factory(cfg, ctx, split, train, rank, world, weights)
    if train and cfg.loader.order == "block":
        loader.block_order(cfg.loader.block_size, cfg.loader.shuffle_window)
    if train and cfg.loader.group_column:
        loader.group_batches(ctx.group_ids(split, cfg.loader.group_column), cfg.loader.groups_per_batch)
    return loader


@register_backend("pil")
def _pil(cfg, ctx, split, train, rank, world, weights):
    from engine.data.pil_loader import PilLoader

    return PilLoader(ctx.split(split), aug=cfg.augment, size=cfg.data.image_size, batch_size=cfg.loader.batch_size_for(train),
                     train=train, rank=rank, world=world, seed=cfg.run.seed, num_workers=cfg.loader.num_workers,
                     prefetch=cfg.loader.prefetch, pin_memory=cfg.loader.pin_memory and _cuda(), sample_weights=weights,
                     on_bad_image=cfg.data.on_bad_image)


@register_backend("cache")
def _cache(cfg, ctx, split, train, rank, world, weights):
    from engine.data.cache.loader import create_cache_loader

    return create_cache_loader(cfg, ctx, split, train, rank, world, weights)


@register_backend("dali")
def _dali(cfg, ctx, split, train, rank, world, weights):
    from engine.data.dali.loader import create_dali_loader  # imports nvidia.dali lazily, with an install hint

    return create_dali_loader(cfg, ctx, split, train, rank, world, weights)


@register_backend("dali_cache")
def _dali_cache(cfg, ctx, split, train, rank, world, weights):
    from engine.data.dali.loader import create_dali_cache_loader

    return create_dali_cache_loader(cfg, ctx, split, train, rank, world, weights)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
