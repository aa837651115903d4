"""tools/oof.py: stratified seeded folds cover every train row once; a fold's model never sees its held-out
rows (a row-identifying feature is memorised in-sample but tells out-of-fold predictions nothing); the folds
share the recipe's caches (built once, no fold builds its own)."""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import load_config
from engine.data.manifest import load_manifest
from engine.workflows.oof import stratified_folds
from tests.training.conftest import PY, run_cmd


def test_folds_are_stratified_and_cover_every_row_once():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(np.bincount(folds)) == [5, 5, 5]
    for c in range(3):  # each class spread as evenly as it can be
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=0))
    assert not np.array_equal(folds, stratified_folds(labels, 3, seed=1))


@pytest.mark.slow
def test_oof_covers_train_rows_once_without_leakage(tiny_overrides, tiny_demo_dataset, tmp_path):
    rows = list(csv.DictReader(open(tiny_demo_dataset)))
    for i, r in enumerate(rows):
        r["row_id"] = f"r{i}"  # identifies the row: only memorisation can use it
    manifest = tmp_path / "leak.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "oof"
    tabular_only = [*tiny_overrides, f"--data.manifest={manifest}", f"--data.root={tiny_demo_dataset.parent}",
                    "--model.backbone=null", "--model.text_encoder=null", "--data.numeric_columns=[]",
                    "--data.categorical_columns=[row_id]", "--model.dropout=0", "--optim.weight_decay=0",
                    "--optim.lr=0.03", "--train.epochs=10"]
    cache = Path(next(a.split("=", 1)[1] for a in tiny_overrides if a.startswith("--cache.dir=")))
    before = {p.name for p in cache.iterdir()}
    run_cmd([PY, "tools/oof.py", "--config", "configs/demo.yaml", "--folds", "2", "--out", str(out), *tabular_only])

    train_rows = [i for i, r in enumerate(rows) if r["split"] == "train"]
    with open(out / "oof.csv") as f:
        oof = list(csv.DictReader(f))
    assert sorted(int(r["row"]) for r in oof) == train_rows  # every train row, exactly once
    for r in oof:
        assert r["label"] == rows[int(r["row"])]["label"]
        assert abs(sum(float(v) for k, v in r.items() if k.startswith("prob_")) - 1) < 1e-4
    with open(out / "folds.csv") as f:
        fold_of = {int(r["row"]): int(r["fold"]) for r in csv.DictReader(f)}
    cfg = load_config("configs/demo.yaml", tabular_only)
    for fold in (0, 1):  # a fold's val split is exactly its held-out rows; they are not in its train split
        data = dataclasses.replace(cfg.data, folds=2, fold=fold)
        m = load_manifest(data, check_files=False, seed=cfg.run.seed)
        held = set(m.split_indices("val").tolist())
        assert held == {int(r["row"]) for r in oof if int(r["fold"]) == fold} == {r for r, f in fold_of.items() if f == fold}
        assert not held & set(m.split_indices("train").tolist())

    # folds share one cache: the recipe's train/val/test caches of this manifest are built once, none per fold
    new = {p.name for p in cache.iterdir()} - before
    assert sorted(n.split("-")[0] for n in new) == ["test", "train", "val"]
    log = [json.loads(line) for line in (out / "sweep_log.jsonl").read_text().splitlines()]
    assert [r["cache"].split(" (")[0] for r in log] == ["built or up to date", "served from the caches built by fold0"]

    # in-sample, fold 0's model has memorised row_id; out of fold the ids are unknown values
    run_cmd([PY, "tools/evaluate.py", "--run", str(out / "runs" / "fold0"), "--split", "train", "--checkpoint", "last"])
    in_sample = json.loads((out / "runs" / "fold0" / "eval" / "train_last_metrics.json").read_text())
    oof_metrics = json.loads((out / "oof_metrics.json").read_text())
    assert in_sample["train_top1"] >= 0.9
    assert oof_metrics["oof_top1"] <= 0.5 and oof_metrics["oof_num_samples"] == len(train_rows)
