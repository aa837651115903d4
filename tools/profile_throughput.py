"""Throughput profile: which stage bounds training, for a recipe on this machine.

    python tools/profile_throughput.py --config CONFIG [--section.key=value ...] [--stages read decode ...]
                                       [--steps N] [--repeats R] [--torch-threads T] [--json OUT.json] [--png OUT.png]

Measures cache read, JPEG decode (PIL; DALI when its backends exist), device
augmentation, host-to-device copies, the model step alone (the ceiling) and
real training steps from every loader backend that can run here; prints a
table and a verdict (end-to-end / model-only per backend, the bounding stage,
what to change). A script, not a test: the figures depend on machine load.
Logic and the JSON schema: engine/profiling/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import exit_on_user_error  # noqa: E402  (after the path set-up above)


@exit_on_user_error  # a mistake in the config, data or files: one line naming it, exit 2
def main(argv: list[str] | None = None) -> int:
    from engine.profiling import STAGES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), help="subset of stages (default: all)")
    p.add_argument("--steps", type=int, default=10, help="timed model / end-to-end steps (read: 4x as many batches)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the read, decode and augment stages")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls / steps before timing")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's choice, usually all cores)")
    p.add_argument("--json", help="write the profile here (schema: engine/profiling/__init__.py)")
    p.add_argument("--png", help="write a bar chart of images/s per stage here")
    args, overrides = p.parse_known_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from engine.config import load_config
    from engine.profiling import profile, table, verdict, write_json, write_png

    cfg = load_config(args.config, overrides)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    result = profile(cfg, args.stages, args.steps, args.repeats, args.warmup, log=lambda m: print(m, flush=True))
    print()
    print(table(result))
    print()
    print(verdict(result))
    if args.json:
        write_json(result, args.json)
    if args.png:
        write_png(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
