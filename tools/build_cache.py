"""Build (or resume, or verify) the decode caches of the configured splits.

    python tools/build_cache.py --config CONFIG [--section.key=value ...] [--verify]
    python tools/build_cache.py --config CONFIG --shard I/N     # on N processes or machines, I = 0 .. N-1
    python tools/build_cache.py --config CONFIG --seal          # once every shard is done

Builds ``cache.splits`` into ``cache.dir`` (see engine/data/cache/). A killed
build resumes where it stopped when run again. ``--verify`` checks every record
of the existing caches against its checksum instead of building.

``--shard I/N`` builds shard I of N of each split into the shared ``cache.dir``
beside the other shards' builders (disjoint record ranges, one lock per shard;
a killed shard resumes when rerun). ``--shard auto`` takes I and N from the
launcher (``deepspeed``/``torchrun``: RANK and WORLD_SIZE; SLURM: SLURM_PROCID and
SLURM_NTASKS), so each rank of a launch builds its share. ``--seal`` verifies
every record and finishes the caches, byte-identical to a single-process build,
or names the shards that are still running, unfinished or not started.

Exit status: 0 done (or every record verified); 1 --verify found records that do
not match their checksums; 2 a cache could not be built, found or read (bad
images in error mode, a missing, stale or damaged cache) or the config is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import exit_on_user_error  # noqa: E402  (after the path set-up above)


@exit_on_user_error  # config, manifest or cache problems: one line naming the key/file/row, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("--verify", action="store_true", help="check every record of the existing caches against its checksum")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", help="also write each split's build summary here (records, rejects, seconds, images/s, decoder)")
    p.add_argument("--shard", metavar="I/N", help="build only shard I of N (0-based), or 'auto' from the launcher's rank")
    p.add_argument("--seal", action="store_true", help="finish a sharded build: verify every record, seal the caches")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # the DeepSpeed launcher's
    args, overrides = p.parse_known_args(argv)

    from engine.config import load_config
    from engine.data.cache import CacheError, build_cache, cache_dir, cache_key, verify_cache
    from engine.data.cache.inventory import record_origin
    from engine.data.cache.selection import find_cover
    from engine.data.cache.shards import parse_shard, workers_per_builder
    from engine.data.cache.writer import ServedSummary, seal_cache
    from engine.data.context import DataContext
    from engine.errors import UserError

    if sum((args.verify, args.seal, args.shard is not None)) > 1:
        raise UserError("--verify, --seal and --shard are different steps: give one of them")
    shard = parse_shard(args.shard) if args.shard is not None else None
    cfg = load_config(args.config, overrides)
    splits = tuple(cfg.cache.splits)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length,
                      required_splits=tuple(s for s in ("train",) + splits if s))
    status, summaries = 0, {}
    for split in splits:
        if args.verify:
            key = cache_key(cfg, ctx, split)
            folder, cover = cache_dir(cfg, key), None
            if not folder.is_dir():
                cover = find_cover(cfg, ctx, split, key)  # a subset or fold: verify the cache that serves it
                if cover is None:
                    raise CacheError(f"no {split} cache at {folder}; build it first")
                folder = cover.folder
                print(f"{split}: served from {folder}, verifying all its records")
            report = verify_cache(folder)
            print(report.line())
            status |= bool(report.bad)
        else:
            summary = (seal_cache(cfg, ctx, split) if args.seal else
                       build_cache(cfg, ctx, split, workers_per_builder(cfg.cache.workers), not args.no_progress,
                                   shard=shard))
            print(summary.line())
            if not isinstance(summary, ServedSummary):
                record_origin(cfg, summary.folder)  # what tools/caches.py says it was built from
            summaries[split] = _figures(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=1))
    return int(status)


def _figures(summary) -> dict:
    done = summary.folder / "metadata.json"
    meta = json.loads(done.read_text()) if done.is_file() else {}  # a shard's summary: the build is not sealed yet
    return {"count": summary.count, "good": summary.good, "rejected": len(summary.rejected), "decoded": summary.decoded,
            "seconds": summary.seconds, "images_per_s": summary.decoded / summary.seconds if summary.seconds else None,
            "up_to_date": summary.up_to_date, "decoder": meta.get("decoder"), "folder": str(summary.folder)}


if __name__ == "__main__":
    sys.exit(main())
