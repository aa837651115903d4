"""tools/ensemble.py: the mean of the members' probabilities, scored; members with other classes are refused by name."""
import shutil
import subprocess

import numpy as np
import yaml

from tests.training.conftest import PY, ROOT, deepspeed_cmd, env, run_cmd, train_cmd


def test_ensemble_averages_members_and_refuses_other_classes(tiny_run, tiny_overrides, tmp_path):
    train_cmd(tiny_overrides, "--train.epochs=1", "--eval.test=true", "--run.seed=1", f"--run.output_dir={tmp_path}",
              "--run.name=seed1")
    second = tmp_path / "seed1"
    out = tmp_path / "ens"
    run_cmd([PY, "tools/ensemble.py", "--runs", str(tiny_run), str(second), "--out", str(out), "--split", "test"])
    z = np.load(out / "ensemble_test_probs.npz")
    members = [np.load(r / "eval" / "test_best_probs.npz") for r in (tiny_run, second)]
    for m in members:
        assert np.array_equal(np.sort(m["rows"]), z["rows"])
    mean = np.mean([m["probs"][np.argsort(m["rows"])] for m in members], axis=0)
    np.testing.assert_allclose(z["probs"], mean, rtol=1e-6)
    table = (out / "ensemble_test.md").read_text()
    assert "ensemble (mean)" in table and str(second) in table

    # as users start the other tools: under the DeepSpeed launcher, a stale member evaluated first, rank 0 writes
    (second / "eval" / "test_best_probs.npz").unlink()
    deepspeed_cmd(1, "tools/ensemble.py", "--runs", str(tiny_run), str(second), "--out", str(tmp_path / "ens_ds"),
                  "--split", "test")
    assert (second / "eval" / "test_best_probs.npz").is_file()
    launched = np.load(tmp_path / "ens_ds" / "ensemble_test_probs.npz")
    assert np.array_equal(launched["rows"], z["rows"])
    np.testing.assert_allclose(launched["probs"], z["probs"], rtol=1e-6)

    other = tmp_path / "other_classes"
    shutil.copytree(second, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["provenance"]["classes"] = list(reversed(cfg["provenance"]["classes"]))
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run([PY, "tools/ensemble.py", "--runs", str(tiny_run), str(other), "--out", str(tmp_path / "x")],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    assert p.returncode == 2 and str(other) in p.stderr and "same classes" in p.stderr, p.stderr
