"""Predict with an exported fusion classifier: plain PyTorch + torchvision + Pillow (+ transformers' tokenizer).

    python predict.py new.csv [--root DIR] [--out preds.csv]

This file is copied into every export (tools/export.py) and imports nothing of the engine: the folder beside
it holds model.pt2 (torch.export), tokenizer/ and preprocess.json (image size, normalisation, columns, tabular
statistics, classes). The preprocessing repeats the engine's evaluation path (engine/data/pil_loader.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """The engine's colour conversion: 16-bit/float greyscale scaled, transparency over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", im.size, background + (255,)), im).convert("RGB")
    return im.convert("RGB")


class Exported:
    """The model and its preprocessing, loaded from an export folder."""

    def __init__(self, folder: Path = HERE):
        from torchvision.transforms import v2 as T

        self.meta = json.loads((folder / "preprocess.json").read_text())
        self.model = torch.export.load(str(folder / "model.pt2")).module()
        m = self.meta
        self.transform = T.Compose([T.Resize(m["resize"]), T.CenterCrop(m["image_size"]), T.ToImage(),
                                    T.ToDtype(torch.float32, scale=True), T.Normalize(m["mean"], m["std"])])
        self.tokenizer = None
        if m["text_column"]:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))

    def inputs(self, rows: list[dict], paths: list[str]) -> dict[str, torch.Tensor]:
        m, tab = self.meta, self.meta["tabular"]
        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(self.transform(to_rgb(ImageOps.exif_transpose(im))))
        n = len(rows)
        if self.tokenizer is not None:
            enc = self.tokenizer([str(r[m["text_column"]] or "") for r in rows], padding="max_length", truncation=True,
                                 max_length=m["text_max_length"], return_tensors="pt")
            ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        else:
            ids = mask = torch.zeros((n, 0), dtype=torch.long)
        numeric = torch.zeros((n, len(tab["numeric_columns"])), dtype=torch.float32)
        for j, col in enumerate(tab["numeric_columns"]):
            for i, r in enumerate(rows):
                v = _to_float(r.get(col))
                numeric[i, j] = 0.0 if math.isnan(v) else (v - tab["means"][j]) / tab["stds"][j]
        categorical = torch.zeros((n, len(tab["categorical_columns"])), dtype=torch.long)
        for j, col in enumerate(tab["categorical_columns"]):
            lookup = {v: k + 1 for k, v in enumerate(tab["vocabs"][j])}
            for i, r in enumerate(rows):
                v = r.get(col)
                categorical[i, j] = 0 if v in (None, "") else lookup.get(str(v), 0)  # 0: unseen or missing
        return dict(images=torch.stack(images), input_ids=ids, attention_mask=mask, numeric=numeric, categorical=categorical)

    @torch.no_grad()
    def predict(self, rows: list[dict], paths: list[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities [N, C] (columns: self.meta['classes'])."""
        out = [self.model(**self.inputs(rows[s : s + batch_size], paths[s : s + batch_size])).numpy()
               for s in range(0, len(rows), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.meta["classes"])), np.float32)


def _to_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path, help="CSV of new samples (image, text and tabular columns)")
    ap.add_argument("--root", type=Path, default=None, help="folder the image paths are relative to (default: the CSV's)")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"))
    args = ap.parse_args()
    exported = Exported()
    with open(args.manifest, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    root = args.root or args.manifest.parent
    paths = [str(root / r[exported.meta["image_column"]]) for r in rows]
    probs = exported.predict(rows, paths)
    classes = exported.meta["classes"]
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "pred", "prob", *(f"prob_{c}" for c in classes)])
        for i, p in enumerate(probs):
            j = int(np.argmax(p))
            w.writerow([i, classes[j], f"{p[j]:.6f}", *(f"{v:.6f}" for v in p)])
    print(f"wrote {args.out}: {len(rows)} predictions")


if __name__ == "__main__":
    main()
