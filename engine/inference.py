"""A trained run as a ready model and its preprocessing, in one call, outside the training engine.

    import engine
    run = engine.load_run("runs/demo")                      # 'best' weights, fp32, CPU, eval mode
    probs = run.predict([{"image": "a.jpg", "text": "calm hill", "age": 41, "site": "north"}], root="photos/")
    run.classes[probs.argmax(1)[0]]

Everything comes from the run folder: ``config.yaml`` (the model), ``preprocess.json`` (class names, image size
and normalisation, the text and tabular columns, the text length, the tabular statistics and vocabularies
fitted on the train split), ``tokenizer/`` (the text encoder's tokenizer, saved at training) and the checkpoint's
weights; neither the manifest nor the cache is read, and no DeepSpeed or process group is started. Runs trained
before preprocess.json was written rebuild it from their manifest, as training did.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

PREPROCESS_FILE = "preprocess.json"
TOKENIZER_DIR = "tokenizer"


def write_preprocessing(run_path: Path, cfg, ctx) -> None:
    """RUN/preprocess.json and RUN/tokenizer/: what ``load_run`` needs besides the config and the weights."""
    from engine.workflows.export import preprocess_meta

    (run_path / PREPROCESS_FILE).write_text(json.dumps({**preprocess_meta(cfg, ctx), "text_encoder": ctx.text_encoder},
                                                       indent=2))
    if ctx.tokenizer is not None:
        ctx.tokenizer.save_pretrained(str(run_path / TOKENIZER_DIR))


@dataclasses.dataclass
class LoadedRun:
    """A run's model (eval mode) and what turns raw samples into its inputs."""

    path: Path
    cfg: object  # the run's Config
    model: torch.nn.Module
    classes: list[str]
    tabular: object  # engine.data.tabular.TabularEncoder, fitted on the run's train split
    tokenizer: object  # None without a text branch
    text_max_length: int
    image_size: int

    def transform(self):
        """PIL image -> normalised float tensor [3, S, S]: the evaluation path (resize, centre crop, normalise)."""
        from engine.data.pil_loader import pil_transforms

        return pil_transforms(self.cfg.augment, self.image_size, train=False)

    def inputs(self, rows: list[dict], root: Optional[str | Path] = None) -> dict[str, torch.Tensor]:
        """Model inputs (fp32, CPU) for raw samples: dicts with the run's image column (a path, relative to
        ``root``), text column and tabular columns, as in its manifest."""
        from engine.workflows.predict import input_batches

        base = Path(root) if root is not None else Path(".")
        paths = [str(base / str(r[self.cfg.data.image_column])) for r in rows]
        return next(input_batches(self.cfg, self, rows, paths, max(len(rows), 1)))

    @torch.no_grad()
    def predict(self, rows: list[dict], root: Optional[str | Path] = None, batch_size: int = 32) -> np.ndarray:
        """Class probabilities [N, C] (columns in ``classes`` order) for raw samples."""
        device = next(self.model.parameters()).device
        out = [np.zeros((0, len(self.classes)), np.float32)]
        for s in range(0, len(rows), batch_size):
            inputs = self.inputs(rows[s : s + batch_size], root)
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out)


def load_run(run: str | Path, checkpoint: str = "best", overrides: Optional[list[str]] = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The run folder ``run`` with the weights of ``checkpoint`` (best or last), fp32, in eval mode on ``device``.

    ``overrides`` (``--section.key=value``) apply to its config.yaml, as on the command line of the tools.
    """
    from engine.config import load_config
    from engine.data.tabular import TabularEncoder
    from engine.errors import RunFolderError
    from engine.models import create_model
    from engine.models.text import load_tokenizer

    path = Path(run)
    if not (path / "config.yaml").is_file():
        raise RunFolderError(f"{path}: no config.yaml there; is it a run folder (run.output_dir/run.name)?")
    cfg = load_config(path / "config.yaml", list(overrides or []))
    meta_file = path / PREPROCESS_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        tabular = TabularEncoder.from_dict(meta["tabular"])
        classes, length = list(meta["classes"]), int(meta["text_max_length"])
        tokenizer = None
        if meta["text_column"] is not None:
            saved = path / TOKENIZER_DIR
            tokenizer = load_tokenizer(str(saved) if saved.is_dir() else meta["text_encoder"])
    else:  # a run from before preprocess.json: its train split gives the same statistics again
        from engine.data.context import DataContext

        ctx = DataContext(cfg.data, cfg.run.seed, cfg.model.text_encoder, cfg.model.text_max_length,
                          required_splits=("train",))
        tabular, classes, length, tokenizer = ctx.tabular, ctx.classes, ctx.text_max_length, ctx.tokenizer
    model = create_model(cfg.model, len(classes), len(cfg.data.numeric_columns), tabular.cardinalities)
    load_model_weights(model, path / "checkpoints", checkpoint)
    return LoadedRun(path, cfg, model.to(device).eval(), classes, tabular, tokenizer, length, cfg.data.image_size)


def load_model_weights(module: torch.nn.Module, folder: Path, tag: str) -> None:
    """Checkpoint ``tag``'s weights into a plain module: a weights-only tag's model.safetensors, or a full tag's
    DeepSpeed model file (read without unpickling code)."""
    from engine.errors import CheckpointError
    from engine.training.checkpoint import WEIGHTS_FILE, NoCheckpoint, load_weights_file, resolve_tag, weights_only_loads

    name = resolve_tag(folder, tag)
    if name is None:
        raise NoCheckpoint(f"no checkpoint '{tag}' under {folder}")
    if (folder / name / WEIGHTS_FILE).is_file():
        load_weights_file(module, folder / name / WEIGHTS_FILE)
        return
    model_file = folder / name / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise CheckpointError(f"{folder / name} holds no full model file (a ZeRO-3 checkpoint keeps its weights in "
                              "shards): evaluate it with tools/evaluate.py, or save best weights-only")
    with weights_only_loads(folder / name):
        state = torch.load(model_file, map_location="cpu")["module"]
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{model_file} does not fit this model ({str(e).splitlines()[0][:200]} ...)") from None
