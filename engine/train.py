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

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> dict:
    from engine.config import ConfigError, load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML recipe in configs/")
    ap.add_argument("--resume", action="store_true", help="continue the run in run.output_dir/run.name from its 'last' checkpoint")
    ap.add_argument("--stop-after-epoch", type=int, default=None, help="exit after saving this epoch (simulates a kill; tests --resume)")
    ap.add_argument("--stop-after-step", type=int, default=None, help="exit after this optimizer update (simulates a kill mid-epoch)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the DeepSpeed launcher
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        ap.exit(2, f"config error: {e}\n")
    from engine.training.loop import train

    try:
        return train(cfg, resume=args.resume, stop_after_epoch=args.stop_after_epoch, stop_after_step=args.stop_after_step)
    except ConfigError as e:  # found once the run knows its world size and card (DeepSpeed config)
        ap.exit(2, f"config error: {e}\n")
    except input_errors() as e:  # the user's data or files: one message naming file/row, not a traceback
        ap.exit(2, f"error: {e}\n")


def input_errors() -> tuple[type[Exception], ...]:
    """Problems with the user's manifest, images, cache or weights, each raised with a message that names them."""
    from engine.data.cache.format import CacheError
    from engine.data.dali.bad_images import BadImageError
    from engine.data.manifest import ManifestError
    from engine.models.backbones import PretrainedWeightsError

    return ManifestError, CacheError, BadImageError, PretrainedWeightsError


if __name__ == "__main__":
    main()
