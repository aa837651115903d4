"""The flash decode cache: images decoded once into a memory-mapped file, read at memory speed.

    format.py  the on-disk format and what writer and reader share (the cache key, the build command, checksums,
               rejects, the image-change check): the writer and the reader never import each other
    decode.py  one image file -> RGB uint8 [S, S, 3]
    decode_jpeg.py  cache.storage=jpeg: a record's JPEG at build, its decode (Pillow, or DALI on a GPU) when read
    writer.py  build_cache: parallel, resumable build of one split (or one shard of it); seal_cache
    shards.py  sharded builds: shard I of N's chunk range, one claim per shard, what a seal reports missing
    reader.py  open_cache / CacheReader (SelectionReader: a selection served from its cover) / verify_cache
    loader.py  CacheLoader: a ShardedLoader gathering batches from the map in threads
    selection.py  a subset or fold served from the cache that holds its rows (no build of its own): finding that cover
    inventory.py  what cache.dir holds, what each cache was built from, which are stale (tools/caches.py)

Build with ``python tools/build_cache.py --config CONFIG`` (``--shard I/N`` on N machines, then ``--seal``);
train with ``loader.backend: cache``.
"""
from engine.data.cache.format import CacheBuildError, CacheError, CacheKey, build_command, cache_dir, cache_key
from engine.data.cache.reader import CacheReader, VerifyReport, open_cache, verify_cache
from engine.data.cache.writer import BuildSummary, build_cache, seal_cache

__all__ = ["CacheError", "CacheBuildError", "CacheKey", "CacheReader", "BuildSummary", "VerifyReport",
           "build_cache", "build_command", "cache_dir", "cache_key", "open_cache", "seal_cache", "verify_cache"]
