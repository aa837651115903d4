"""tests/tools share the training tests' tiny run settings (a tiny ResNet and BERT, 2 steps per epoch, a built cache)."""
from pathlib import Path

import pytest

from tests.training.conftest import tiny_overrides, train_cmd  # noqa: F401, F811  (a session fixture, re-exported for tests/tools)


@pytest.fixture(scope="session")
def tiny_run(tiny_overrides, tmp_path_factory) -> Path:
    """One finished tiny run (image + text + tabular, 2 epochs, test split scored): the run folder."""
    out = tmp_path_factory.mktemp("tiny_runs")
    train_cmd(tiny_overrides, "--train.epochs=2", "--eval.test=true", f"--run.output_dir={out}", "--run.name=fused")
    return out / "fused"
