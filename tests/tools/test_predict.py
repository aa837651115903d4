"""tools/predict.py: new raw samples (no label, no split, no cache) are predicted exactly as the evaluation
of the PIL backend scores the same samples."""
import csv
import shutil

import numpy as np

from tests.training.conftest import PY, run_cmd


def test_predict_matches_pil_evaluation(tiny_run, tiny_demo_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # this test's evaluation files stay its own
    test_rows = [r for r in csv.DictReader(open(tiny_demo_dataset)) if r["split"] == "test"]
    new = tmp_path / "new" / "new.csv"
    new.parent.mkdir()
    with open(new, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "text", "age", "site"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("image", "text", "age", "site")} for r in test_rows)
    run_cmd([PY, "tools/predict.py", "--run", str(run), "--manifest", str(new), "--root", str(tiny_demo_dataset.parent),
             "--out", str(tmp_path / "preds.csv"), "--batch-size", "5"])
    with open(tmp_path / "preds.csv") as f:
        preds = list(csv.DictReader(f))
    assert [p["image"] for p in preds] == [r["image"] for r in test_rows]
    got = np.array([[float(p[k]) for k in p if k.startswith("prob_")] for p in preds])

    run_cmd([PY, "tools/evaluate.py", "--run", str(run), "--split", "test", "--loader.backend=pil"])
    z = np.load(run / "eval" / "test_best_probs.npz")
    want = z["probs"][np.argsort(z["rows"])]  # test rows in manifest order, as in new.csv
    np.testing.assert_allclose(got, want, atol=2e-6)

    # The documented call: the run folder alone (its manifest gone) gives the same model and preprocessing
    import yaml

    import engine

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["manifest"] = str(tmp_path / "moved_away.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    loaded = engine.load_run(run)
    assert loaded.classes == list(z["classes"]) and not loaded.model.training
    rows = [{k: r[k] for k in ("image", "text", "age", "site")} for r in test_rows]
    np.testing.assert_allclose(loaded.predict(rows, root=tiny_demo_dataset.parent, batch_size=7), want, atol=2e-6)
    assert loaded.inputs(rows[:2], root=tiny_demo_dataset.parent)["images"].shape == (2, 3, 32, 32)
