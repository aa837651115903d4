"""tools/sweep.py: variants x grid planned and checked before any run; tables equal the runs' summary.json;
a stopped sweep run again skips finished variants, resumes a killed one and gives the uninterrupted table."""
import csv
import json
import math

import pytest

from engine.workflows.results import aggregate, markdown, run_row
from engine.workflows.sweep import parse_grid, plan
from tests.training.conftest import PY, ROOT, env, run_cmd

VARIANTS = "fused: {}\nimage_only: {model.text_encoder: null, model.use_tabular: false}\n"
RUN_ARGS = ["--train.epochs=2", "--eval.test=true"]
NOISY = ("wall_time_s", "train_images_per_s", "peak_memory_mb")  # measured, not computed: differ between processes


def sweep_cmd(out, variants, overrides, *args):
    return [PY, "tools/sweep.py", "--config", "configs/demo.yaml", "--variants", str(variants), "--out", str(out),
            *overrides, *RUN_ARGS, *args]


def read_csv(path):
    with open(path) as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def test_plan_names_grid_points_and_groups_seeds():
    variants = plan({"a": {"model.text_encoder": None}, "b": {}}, parse_grid(["optim.lr=0.1,0.01", "run.seed=0,1"]))
    assert [v.name for v in variants][:2] == ["a__optim.lr=0.1__run.seed=0", "a__optim.lr=0.1__run.seed=1"]
    assert len(variants) == 8 and variants[0].group == variants[1].group == "a__optim.lr=0.1"
    assert variants[0].overrides == ["--model.text_encoder=null", "--optim.lr=0.1", "--run.seed=0"]
    assert parse_grid(["data.numeric_columns=[a,b],[a]"]) == [("data.numeric_columns", ["[a,b]", "[a]"])]


def test_mean_and_std_over_seeds():
    rows = [{"val_top1": 0.5}, {"val_top1": 0.7}, {"val_top1": 0.4}]
    agg = aggregate(rows, ["a", "a", "b"], ["val_top1"])
    assert agg[0]["n"] == 2 and agg[0]["val_top1"][0] == pytest.approx(0.6)
    assert agg[0]["val_top1"][1] == pytest.approx(math.sqrt(0.02)) and math.isnan(agg[1]["val_top1"][1])
    assert "| a | 2 | 0.6000 ± 0.1414 |" in markdown(rows, ["a0", "a1", "b0"], ["a", "a", "b"], ["val_top1"])


def test_unknown_key_fails_before_any_run_naming_the_variant(tmp_path):
    variants = tmp_path / "v.yaml"
    variants.write_text("fused: {}\ntypo: {model.text_encoderr: null}\n")
    import subprocess

    p = subprocess.run(sweep_cmd(tmp_path / "out", variants, []), cwd=ROOT, env=env(), capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "variant 'typo'" in p.stderr and "model.text_encoderr" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_sweep_table_matches_runs_and_a_stopped_sweep_resumes(tmp_path, tiny_overrides):
    variants = tmp_path / "v.yaml"
    variants.write_text(VARIANTS)
    # reference: image_only uninterrupted
    full = tmp_path / "full"
    run_cmd(sweep_cmd(full, variants, tiny_overrides, "--only", "image_only"))
    # a sweep stopped after its first variant, then image_only killed after epoch 1 of 2 ...
    part = tmp_path / "part"
    out = run_cmd(sweep_cmd(part, variants, tiny_overrides, "--max-runs", "1")).stdout
    assert "not finished yet" in out and not (part / "runs" / "image_only").exists()
    image_only = [*tiny_overrides, *RUN_ARGS, "--model.text_encoder=null", "--model.use_tabular=false"]
    run_cmd([PY, "tools/build_cache.py", "--config", "configs/demo.yaml", *image_only, "--no-progress"])
    run_cmd([PY, "engine/train.py", "--config", "configs/demo.yaml", *image_only, f"--run.output_dir={part / 'runs'}",
             "--run.name=image_only", "--stop-after-epoch", "1"])
    # ... run again: fused is skipped, image_only resumes from its 'last' checkpoint
    run_cmd(sweep_cmd(part, variants, tiny_overrides))
    log = [json.loads(line) for line in (part / "sweep_log.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["status"]) for r in log] == [("fused", "ran"), ("image_only", "resumed")]

    table = read_csv(part / "results.csv")
    assert list(table) == ["fused", "image_only"]
    for name, row in table.items():  # every cell is the run's summary.json figure
        summary = json.loads((part / "runs" / name / "summary.json").read_text())
        assert float(row["val_top1"]) == summary["best"]["val_top1"]
        assert float(row["test_top1"]) == summary["test"]["test_top1"]
        assert float(row["val_auc_macro"]) == summary["best"]["val_auc_macro"]
        assert int(row["best_epoch"]) == summary["best"]["epoch"]
        assert float(row["num_parameters"]) == summary["num_parameters"]
        assert row == {k: str(v) for k, v in {"variant": name, **run_row(part / "runs" / name)}.items()}
    reference = read_csv(full / "results.csv")["image_only"]
    same = [c for c in reference if c not in NOISY]
    assert {c: table["image_only"][c] for c in same} == {c: reference[c] for c in same}
    assert (part / "results.png").stat().st_size > 0 and "| image_only |" in (part / "results.md").read_text()


def test_variants_that_differ_only_in_their_rows_share_one_unselected_build(tmp_path):
    """A learning curve (max_train_samples) or folds: one cache build without the selection serves every variant."""
    from engine.config import load_config
    from engine.workflows.sweep import UNSELECTED, SweepConfig, cache_signature, load_all, selection_groups

    variants = tmp_path / "v.yaml"
    variants.write_text("fused: {}\nimage_only: {model.text_encoder: null, model.use_tabular: false}\n")
    sweep = SweepConfig(base="configs/demo.yaml", out=str(tmp_path / "out"), variants=str(variants),
                        grid=["data.max_train_samples=8,16"])
    plans = plan({"fused": {}, "image_only": {"model.text_encoder": None, "model.use_tabular": False}},
                 parse_grid(sweep.grid))
    configs = load_all(sweep, plans)
    groups = selection_groups(configs)
    assert len(groups) == 2  # fused x 2 subsets, image_only x 2 subsets: other text settings, another cache
    full = load_config("configs/demo.yaml", ["--data.max_train_samples=8", *UNSELECTED])
    assert cache_signature(full) == cache_signature(full, selection=False) in groups
    assert not selection_groups({v.name: c for v, c in zip(plans, configs.values()) if v.name.endswith("=8")})
