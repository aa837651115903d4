"""tests/tools share the training tests' tiny run settings (a tiny ResNet and BERT, 2 steps per epoch, a built cache)."""
from tests.training.conftest import tiny_overrides  # noqa: F401  (a session fixture, re-exported for tests/tools)
