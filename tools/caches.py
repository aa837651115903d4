"""List the decode caches under cache.dir (size, what each was built from, stale or not) and remove stale ones.

    python tools/caches.py list  --config CONFIG [--section.key=value ...]     (or --dir DIR instead of --config)
    python tools/caches.py prune --config CONFIG [--older-than HOURS] [--yes]

``list`` prints one line per cache: its folder, records, disk size, age, state, and what it was built from
(manifest, stored size and resize policy, storage, tokenizer). ``prune`` removes the stale ones: a finished
cache whose manifest is gone or changed, or whose image files changed since it was built, and an unfinished
build (``.partial``) untouched for --older-than hours (default 24) while no build runs. Without --yes it only
says what it would remove. A cache without an origin record (``origin.json``, written by tools/build_cache.py;
older caches lack it) is judged with the --config recipe when it was built from that recipe's manifest file,
else never judged stale: delete it by hand if you know it is. A seeded subset or fold is no
cache of its own: it is served from the cache that holds its rows. See engine/data/cache/inventory.py.

Exit status: 0 done; 2 the config or folder is wrong.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import UserError, exit_on_user_error  # noqa: E402  (after the path set-up above)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "prune"))
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="recipe whose cache.dir to look in")
    where.add_argument("--dir", type=Path, help="the cache folder itself")
    p.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                   help="an unfinished build untouched this long is stale (default 24)")
    p.add_argument("--yes", action="store_true", help="prune: remove them (without it: only say what would go)")
    args, overrides = p.parse_known_args(argv)
    if args.older_than < 0:
        raise UserError(f"--older-than must be >= 0 hours, got {args.older_than}")
    if args.dir is not None and overrides:
        raise UserError(f"--section.key overrides ({' '.join(overrides)}) need --config, not --dir")

    from engine.data.cache.inventory import inspect_caches, origin_of, prune, total_bytes

    recipe = None
    if args.dir is not None:
        root = args.dir
    else:
        from engine.config import load_config

        cfg = load_config(args.config, overrides)
        root, recipe = Path(cfg.cache.dir), origin_of(cfg)
    if not root.is_dir():
        raise UserError(f"cache.dir {root} is not a folder")
    entries = inspect_caches(root, args.older_than * 3600, recipe)
    if args.action == "list":
        width = max((len(e.folder.name) for e in entries), default=0)
        for e in entries:
            print(_line(e, width))
        print(f"{len(entries)} cache(s) in {root}, {_size(total_bytes(entries))} on disk "
              f"(shared pixel files counted once), {sum(bool(e.stale) for e in entries)} stale")
        return 0
    stale = [e for e in entries if e.stale]
    for e in stale:
        print(f"{'removing' if args.yes else 'would remove'} {e.folder.name} ({_size(e.disk_bytes)}): {e.stale}")
    if not stale:
        print(f"nothing stale in {root} ({len(entries)} cache(s))")
    elif not args.yes:
        print(f"{len(stale)} stale cache(s); nothing removed: rerun with --yes to remove them")
    if args.yes and stale:
        print(f"removed {len(stale)} cache(s), {_size(prune(root, stale))} (pixel files other caches share stay)")
    return 0


def _line(e, width: int) -> str:
    if e.stale:
        state = f"STALE: {e.stale}"
    elif e.partial:
        state = "partial (building, or stopped recently)"
    elif e.checked:
        state = "ok (checked with this recipe)" if e.origin_from_recipe else "ok"
    else:
        state = ("not checked (no origin.json, and not built from this recipe's files)" if not e.origin
                 else "not checked (its files cannot be named from its origin)")
    records = "-" if e.partial else f"{e.meta.get('good', '?')}/{e.meta.get('count', '?')}"
    shares = f", pixels shared with {', '.join(e.shares_with)}" if e.shares_with else ""
    return (f"{e.folder.name:<{width}}  {records:>13} records  {_size(e.disk_bytes):>10}  {_age(e.age_s):>7} old  "
            f"{state}  [{e.built_from()}{shares}]")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _age(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h" if seconds < 172800 else \
        f"{seconds / 86400:.1f} d"


if __name__ == "__main__":
    sys.exit(main())
