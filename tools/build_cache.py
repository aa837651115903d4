"""Build (or resume, or verify) the decode caches of the configured splits.

    python tools/build_cache.py --config CONFIG [--section.key=value ...] [--verify]

Builds ``cache.splits`` into ``cache.dir`` (see engine/data/cache/). A killed
build resumes where it stopped when run again. ``--verify`` checks every record
of the existing caches against its checksum instead of building.

Exit status: 0 done (or every record verified); 1 --verify found records that do
not match their checksums; 2 a cache could not be built, found or read (bad
images in error mode, a missing, stale or damaged cache) or the config is wrong.
"""
from __future__ import annotations

import argparse
import json
import os
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
    args, overrides = p.parse_known_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from engine.config import load_config
    from engine.data.cache import CacheError, build_cache, cache_dir, cache_key, verify_cache
    from engine.data.dataset import DataContext

    cfg = load_config(args.config, overrides)
    splits = tuple(cfg.cache.splits)
    ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length,
                      required_splits=tuple(s for s in ("train",) + splits if s))
    status, summaries = 0, {}
    for split in splits:
        if args.verify:
            folder = cache_dir(cfg, cache_key(cfg, ctx, split))
            if not folder.is_dir():
                raise CacheError(f"no {split} cache at {folder}; build it first")
            report = verify_cache(folder)
            print(report.line())
            status |= bool(report.bad)
        else:
            summary = build_cache(cfg, ctx, split, progress=not args.no_progress)
            print(summary.line())
            summaries[split] = _figures(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=1))
    return int(status)


def _figures(summary) -> dict:
    meta = json.loads((summary.folder / "metadata.json").read_text())
    return {"count": summary.count, "good": summary.good, "rejected": len(summary.rejected), "decoded": summary.decoded,
            "seconds": summary.seconds, "images_per_s": summary.decoded / summary.seconds if summary.seconds else None,
            "up_to_date": summary.up_to_date, "decoder": meta.get("decoder"), "folder": str(summary.folder)}


if __name__ == "__main__":
    sys.exit(main())
