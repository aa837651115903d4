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
                warnings.warn(f"train.wandb=true but wandb is not installed ({optional.install_hint('wandb')}); not logging there")
            else:
                self.wandb = _wandb_run(cfg, path, resume)

    def scalars(self, values: dict, step: int) -> None:
        values = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_", "test_")) else k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


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


def plot_curves(records: list[dict], path: Path) -> None:
    """curves.png: train/val loss and val top-1 by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    get = lambda key: [r.get(key, math.nan) for r in records]  # noqa: E731
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, get("train_loss"), marker="o", label="train")
    ax_loss.plot(epochs, get("val_loss"), marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, get("val_top1"), marker="o", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title="val top-1", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
