"""The medical team's shape (configs/medsiglip_classifier.yaml) end to end: a SigLIP checkpoint folder's vision tower as
the image branch of a classifier with a questionnaire branch, bf16, 1 frozen + 1 finetune epoch, named classes plus a
bounded "other" pool whose counts go into the run's provenance; under the DeepSpeed launcher."""
from __future__ import annotations

import json

import yaml

from tests.training.conftest import deepspeed_cmd


def test_siglip_tower_classifier_with_other_pool_in_bf16(tiny_demo_dataset, tiny_siglip_dir, tmp_path):
    deepspeed_cmd(1, "engine/train.py", "--config", "configs/medsiglip_classifier.yaml", f"--data.manifest={tiny_demo_dataset}",
             "--data.numeric_columns=[age]", "--data.categorical_columns=[site]", "--data.image_size=32",
             "--data.classes=[warm_calm, cool_calm]", "--data.other_ratio=0.3", f"--model.backbone={tiny_siglip_dir}",
             "--model.fusion_dim=32", "--loader.backend=pil", "--loader.batch_size=4", "--loader.num_workers=0",
             "--train.epochs=2", "--train.max_steps_per_epoch=2", "--optim.warmup_steps=0", f"--run.output_dir={tmp_path}",
             "--run.name=tower")
    run = tmp_path / "tower"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["frozen", "finetune"]
    prov = yaml.safe_load((run / "config.yaml").read_text())["provenance"]
    assert prov["precision"] == "bf16" and prov["classes"] == ["cool_calm", "warm_calm", "other"]
    pool = prov["class_pool"]
    for split in ("train", "val"):
        kept, other = sum(pool[split]["kept"].values()), pool[split]["other_after"]
        assert other <= 0.3 * (kept + other) and other < pool[split]["other_before"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["test_num_samples"] == pool["test"]["total"]
