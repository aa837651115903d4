"""Train a fusion classifier.

    deepspeed engine/train.py --config configs/demo.yaml [--section.key=value ...] [--resume]
    python engine/train.py --config configs/demo.yaml      # single process, same code
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.errors import exit_on_user_error  # noqa: E402  (after the path set-up; engine/__init__.py sets env defaults)


@exit_on_user_error  # a mistake in the config, data or files: one line naming it, exit 2
def main(argv: list[str] | None = None) -> dict:
    from engine.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML recipe in configs/ (required to train)")
    ap.add_argument("--print-config", action="store_true",
                    help="print every config key with its resolved value, default and comment (of --config and the "
                         "overrides, else the defaults), then exit")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in run.output_dir/run.name from its 'last' checkpoint")
    ap.add_argument("--stop-after-epoch", type=int, default=None,
                    help="exit after saving this epoch (simulates a kill; tests --resume)")
    ap.add_argument("--stop-after-step", type=int, default=None,
                    help="exit after this optimizer update (simulates a kill mid-epoch)")
    # set by the DeepSpeed launcher
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args(argv)
    if args.config is None and not args.print_config:
        ap.error("--config is required (or --print-config to list every key)")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        from engine.config_doc import describe_config

        print(describe_config(cfg))
        return {}
    from engine.training.loop import train  # after the config: a typo fails before torch and DeepSpeed import

    return train(cfg, resume=args.resume, stop_after_epoch=args.stop_after_epoch, stop_after_step=args.stop_after_step)


if __name__ == "__main__":
    main()
