"""Training engine for image + text (+ tabular) fusion classifiers.

Importing the package sets the process-wide environment defaults, once, before
torch or transformers is imported by any entry point (engine/train.py, tools/*
import ``engine`` first). ``TOKENIZERS_PARALLELISM=false``: the Hugging Face
tokenizers' thread pool would otherwise warn and disable itself in every forked
loader worker. ``THP_MEM_ALLOC_ENABLE=1`` makes
PyTorch's CPU allocator put tensors of 2 MiB and more on transparent huge pages.
The CPU data path allocates a fresh output batch per step (a 64 x 3 x 224 x 224
float batch is 38.5 MB); on 4 KiB pages its first touch costs ~9,400 page faults,
measured at ~20 ms per batch on our 2-core CI VM (docs/benchmarks.md).  It is a
default only: an explicit ``THP_MEM_ALLOC_ENABLE=0`` wins, and it has no effect
once torch has been imported or where the kernel's THP mode is ``never``.

``engine.load_run(RUN)`` (engine/inference.py) loads a trained run folder as a ready model and its
preprocessing; it is imported on first use, so ``import engine`` stays free of torch.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def __getattr__(name: str):
    if name == "load_run":
        from engine.inference import load_run

        return load_run
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
