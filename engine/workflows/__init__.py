"""Experiment workflows built on normal runs: sweeps, modality reliance, out-of-fold predictions, ensembles.

Each workflow drives ordinary runs (``engine/train.py`` in a subprocess, or the evaluation functions of
``tools/evaluate.py``) and only adds planning and tables; ``tools/`` holds their entry points.
"""
