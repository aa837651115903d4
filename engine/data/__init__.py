"""The data path: manifest rows -> tokens and tabular fields -> batches of pixels, sharded across ranks.

    config.py       the config sections: data (manifest, columns, splits), cache, loader
    manifest.py     CSV / JSON Lines manifests, validated before any work starts
    context.py      DataContext: everything but the pixels, prepared once per run (classes, tokens, tabular)
    tabular.py      numeric columns normalised with train statistics, categoricals as indices
    sampling.py     sample order and sharding shared by every backend (seeded, balanced, grouped)
    batch.py        Batch: the one contract every loader emits and the training step consumes
    loader_base.py  ShardedLoader: what every backend shares (order, resumable position, block order)
    loaders.py      create_loader and LOADER_BACKENDS, the registry of loader.backend names
    pil_loader.py   loader.backend=pil: PIL decode + torchvision transforms in DataLoader workers
    cache/          loader.backend=cache: the flash decode cache (its own map in cache/__init__.py)
    dali/           loader.backend=dali / dali_cache: NVIDIA DALI pipelines (imported only when chosen)

Start at ``loaders.create_loader(cfg, ctx, split, train, rank, world)``; every backend emits ``Batch``.
"""
