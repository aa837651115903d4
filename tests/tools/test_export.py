"""tools/export.py: the exported folder predicts with plain PyTorch (its predict.py imports no engine module)
what tools/predict.py predicts with the engine, on the same new samples."""
import csv
import subprocess
import sys

import numpy as np

from tests.training.conftest import PY, run_cmd


def test_export_matches_the_engine(tiny_run, tiny_demo_dataset, tmp_path):
    out = tmp_path / "export"
    run_cmd([PY, "tools/export.py", "--run", str(tiny_run), "--out", str(out)])
    assert (out / "model.pt2").is_file() and (out / "tokenizer").is_dir() and (out / "preprocess.json").is_file()
    rows = [r for r in csv.DictReader(open(tiny_demo_dataset)) if r["split"] == "test"]
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "text", "age", "site"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("image", "text", "age", "site")} for r in rows)
    root = str(tiny_demo_dataset.parent)
    run_cmd([PY, "tools/predict.py", "--run", str(tiny_run), "--manifest", str(new), "--root", root,
             "--out", str(tmp_path / "engine.csv")])
    # the export runs from its own folder, with a fresh interpreter that cannot import the engine
    p = subprocess.run([sys.executable, "-I", str(out / "predict.py"), str(new), "--root", root, "--out",
                        str(tmp_path / "exported.csv")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "import engine" not in (out / "predict.py").read_text() and "from engine" not in (out / "predict.py").read_text()

    def probs(path):
        with open(path) as f:
            return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in csv.DictReader(f)])

    np.testing.assert_allclose(probs(tmp_path / "exported.csv"), probs(tmp_path / "engine.csv"), atol=2e-6)
