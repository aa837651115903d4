"""Experiment workflows built on normal runs: sweeps, modality reliance, out-of-fold predictions, ensembles.

Each workflow drives ordinary runs (``engine/train.py`` in a subprocess, or the evaluation functions of
``tools/evaluate.py``) and only adds planning and tables; ``tools/`` holds their entry points.

    sweep.py                one base recipe, named variants of dotted overrides, grids (tools/sweep.py)
    results.py              comparison tables of finished runs: results.csv, results.md, results.png
    reliance.py             one run evaluated with every modality, then with each masked (tools/reliance.py)
    oof.py                  out-of-fold predictions over K folds of the train split (tools/oof.py)
    ensemble.py             several runs' class probabilities averaged and scored (tools/ensemble.py)
    predict.py              predictions for new raw samples, no cache, no labels (tools/predict.py)
    export.py               a trained run as a folder plain PyTorch serves (tools/export.py)
    _standalone_predict.py  the predictor shipped in that folder: PyTorch, torchvision, Pillow only
"""
