"""Where numbers go besides metrics.jsonl: TensorBoard, Weights & Biases, the curves PNG (rank 0 only)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

from engine import optional
from engine.config import Config


class Monitor:
    """Scalar sinks of one run. Every method is a no-op on ranks other than 0."""

    def __init__(self, cfg: Config, path: Path, is_main: bool, resume: bool = False):
        self.tb = self.wandb = None
        if not is_main:
            return
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(path / "tensorboard"))
        if cfg.train.wandb:
            if not optional.has_wandb():  # a warning, not an error: only rank 0 gets here
                warnings.warn(f"train.wandb=true but wandb is not installed ({optional.install_hint('wandb')}); "
                              "not logging there")
            else:
                self.wandb = _wandb_run(cfg, path, resume)

    def scalars(self, values: dict, step: int) -> None:
        """Numbers under one naming scheme in both sinks: ``<split>/<name>`` (``tag``)."""
        values = {tag(k): v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def tag(key: str) -> str:
    """TensorBoard / W&B name of a metrics.jsonl key: ``val_top1`` -> ``val/top1``, ``test_loss`` -> ``test/loss``;
    the rest describes training (``lr``, ``epoch``, ``images_per_s``, ``loss_aux_image``) -> ``train/<key>``."""
    split, _, name = key.partition("_")
    return f"{split}/{name}" if split in ("train", "val", "test") and name else f"train/{key}"


def _wandb_run(cfg: Config, path: Path, resume: bool):
    """A W&B run named after the run folder; its id is kept in RUN_DIR/wandb_id so --resume continues the same one."""
    import wandb

    id_file = path / "wandb_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else wandb.util.generate_id()
    id_file.write_text(run_id)
    t = cfg.train
    return wandb.init(project=t.wandb_project, entity=t.wandb_entity, group=t.wandb_group, tags=list(t.wandb_tags) or None,
                      mode=t.wandb_mode, name=cfg.run.name, id=run_id, dir=str(path), config=cfg.to_dict(),
                      resume="allow" if resume else None)


def plot_curves(records: list[dict], path: Path, metric: str = "val_top1") -> None:
    """curves.png: train/val loss, and ``metric`` (eval.metric, the one 'best' is chosen by) by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    get = lambda key: [r.get(key, math.nan) for r in records]  # noqa: E731
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, get("train_loss"), marker="o", label="train")
    ax_loss.plot(epochs, get("val_loss"), marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_metric.plot(epochs, get(metric), marker="o", color="tab:green")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric)
    if not metric.endswith(("loss", "rank", "rsum")):  # fractions: the whole range, so runs compare by eye
        ax_metric.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_confusion(stem: Path, matrix: list[list[int]], classes: list[str]) -> list[Path]:
    """STEM.csv (rows: true class, columns: predicted class, both labelled) and STEM.png (counts, row-normalised
    colours so a rare class reads as clearly as a common one)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, matrix):
            w.writerow([c, *row])
    counts = np.asarray(matrix, dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * n, 1.6 + 0.5 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=stem.name)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if n <= 30:  # beyond that the numbers do not fit their cells
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=80)
    plt.close(fig)
    return [stem.with_suffix(".csv"), stem.with_suffix(".png")]
