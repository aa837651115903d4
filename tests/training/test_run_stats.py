"""summary.json's run statistics, and data.max_test_samples: a val subset no longer cuts the test split."""
import math

import torch

from engine.config import load_config
from engine.data.manifest import split_limit
from engine.training.run_stats import parameter_counts, peak_memory_mb, time_and_throughput


def test_each_split_has_its_own_subset_setting():
    cfg = load_config(None, ["--data.max_val_samples=8"])
    assert split_limit(cfg.data, "val") == 8 and split_limit(cfg.data, "test") is None
    cfg = load_config(None, ["--data.max_test_samples=5", "--data.max_train_samples=3"])
    assert (split_limit(cfg.data, "train"), split_limit(cfg.data, "val"), split_limit(cfg.data, "test")) == (3, None, 5)


def test_parameter_counts_and_memory():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m[0].requires_grad_(False)
    assert parameter_counts(m) == {"num_parameters": 16 + 10, "trainable_parameters": 10}
    assert peak_memory_mb(torch.device("cpu")) > 0


def test_time_sums_epochs_once():
    records = [{"epoch": 1, "epoch_time_s": 2.0, "images_per_s": 10.0}, {"epoch": 2, "epoch_time_s": 3.0, "images_per_s": 30.0}]
    assert time_and_throughput(records) == {"wall_time_s": 5.0, "train_images_per_s": 20.0}
    assert math.isnan(time_and_throughput([])["wall_time_s"])
