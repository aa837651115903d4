"""Every shipped sweep recipe plans and loads: each variant's config is valid against its base recipe."""
from __future__ import annotations

import pytest

from engine.workflows.sweep import SweepConfig, load_all, planned_variants

SWEEPS = [("configs/sweeps/bakeoff_demo.yaml", "configs/sweeps/bakeoff_demo_variants.yaml", 8),
          ("configs/demo.yaml", "configs/sweeps/modalities.yaml", 4),
          ("configs/demo.yaml", "configs/sweeps/text_vs_clip.yaml", 5)]


@pytest.mark.parametrize("base, variants, n", SWEEPS)
def test_shipped_sweep_loads(base, variants, n, tmp_path):
    sweep = SweepConfig(base=base, out=str(tmp_path), variants=variants)
    configs = load_all(sweep, planned_variants(sweep))
    assert len(configs) == n
