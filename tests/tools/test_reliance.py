"""tools/reliance.py: the run evaluated with all modalities and with each masked; masked evaluations keep their own files."""
import json

import pytest

from engine.workflows.reliance import eval_stem
from tests.training.conftest import PY, ROOT, run_cmd


def test_masked_evaluations_have_their_own_stem():
    assert eval_stem("val", "best") == "val_best"
    assert eval_stem("val", "best", ["text"]) == "val_best_masked-text"
    assert eval_stem("test", "last", ["text", "image"]) == "test_last_masked-image-text"


def test_reliance_table(tiny_run):
    run_cmd([PY, "tools/reliance.py", "--run", str(tiny_run), "--split", "val"])
    ev = tiny_run / "eval"
    table = json.loads((ev / "reliance_val_best.json").read_text())
    rows = {r["masked"]: r for r in table["rows"]}
    assert list(rows) == ["none", "image", "text", "tabular"]
    for masked, row in rows.items():  # each row is that evaluation's own metrics file
        stem = "val_best" if masked == "none" else f"val_best_masked-{masked}"
        metrics = json.loads((ev / f"{stem}_metrics.json").read_text())
        assert row["top1"] == metrics["val_top1"] and row["auc_macro"] == metrics["val_auc_macro"]
        assert row["drop_top1"] == pytest.approx(rows["none"]["top1"] - row["top1"])
        assert (ev / f"{stem}_probs.npz").is_file()
    assert rows["none"]["drop_top1"] == 0
    # the unmasked evaluation is the run's own best-epoch validation (not overwritten by a masked one)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert rows["none"]["top1"] == pytest.approx(summary["best"]["val_top1"])
    assert (ev / "reliance_val_best.md").read_text().startswith("| masked |")


def test_retrieval_run_is_refused_before_any_evaluation(tmp_path, capsys):
    """A dual encoder has no fusion to mask: masking a tower makes every image-text pair score the same."""
    import yaml

    from engine.config import ConfigError, load_config
    from tools.reliance import main

    run = tmp_path / "retrieval"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(load_config(ROOT / "configs/demo_retrieval.yaml").to_dict()))
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(run)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "model.task=retrieval" in err and "same score" in err, err
    assert not (run / "eval").exists()  # refused before any evaluation started
    # evaluate.py's masking would be ignored by the dual encoder, overwriting the unmasked files: refused by key
    with pytest.raises(ConfigError, match="model.mask_modalities"):
        load_config(ROOT / "configs/demo_retrieval.yaml", ["--model.mask_modalities=[text]"])
