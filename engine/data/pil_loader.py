"""The PIL loader (loader.backend=pil): PIL decode + torchvision transforms behind a PyTorch DataLoader.

This is what users run today and what every faster path is measured against.
It emits float NCHW normalised images (already augmented).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from engine.data.batch import Batch
from engine.data.cache.decode import to_rgb
from engine.data.dali.bad_images import BadImageError
from engine.data.context import SplitData
from engine.data.loader_base import ShardedLoader
from engine.data.sampling import served_weights
from kernels.config import AugmentConfig


def decode_rgb(path: str) -> Image.Image:
    """Decode any Pillow-readable image to RGB with EXIF orientation applied, converting colours as the cache
    does (``to_rgb``: 16-bit scaled not clipped, transparency over white), so every backend sees one image."""
    with Image.open(path) as im:
        return to_rgb(ImageOps.exif_transpose(im))


def pil_transforms(aug: AugmentConfig, size: int, train: bool):
    from torchvision.transforms import v2 as T

    tail = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(aug.mean, aug.std)]
    if not train:
        return T.Compose([T.Resize(int(round(size / aug.eval_crop_pct))), T.CenterCrop(size), *tail])
    ops = [T.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, antialias=True), T.RandomHorizontalFlip(aug.hflip)]
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        ops.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.grayscale:
        ops.append(T.RandomGrayscale(aug.grayscale))
    ops += tail
    if aug.erasing:
        ops.append(T.RandomErasing(aug.erasing))
    return T.Compose(ops)


class PilDataset(Dataset):
    """Sample ``position`` of a split: decoded, transformed, with its tokens, tabular fields and label."""

    def __init__(self, data: SplitData, aug: AugmentConfig, size: int, train: bool, seed: int):
        self.data, self.train, self.seed = data, train, seed
        self.transform = pil_transforms(aug, size, train)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """``item``: a position, or (position, repeat) for the repeat-th redraw of it in an epoch."""
        position, repeat = item if isinstance(item, tuple) else (item, 0)
        try:
            img = decode_rgb(self.data.paths[position])
        except Exception as e:  # noqa: BLE001 -- any decoder failure is the file's, named with its row
            raise BadImageError(f"{self.data.paths[position]} (manifest row {int(self.data.rows[position])}, "
                                f"{self.data.split} split) does not decode ({type(e).__name__}: {e}); fix or remove "
                                "the file, or set data.on_bad_image=skip") from None
        if self.train:  # seeded per (seed, epoch, row[, repeat]): same augmentation whatever the worker or world size
            key_parts = [self.seed, self.epoch, self.data.rows[position]] + ([repeat] if repeat else [])
            key = zlib.crc32(np.array(key_parts, dtype=np.int64).tobytes())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key)
                x = self.transform(img)
        else:
            x = self.transform(img)
        fields = self.data.fields(np.array([position]), self.train, self.seed, self.epoch)
        sample = {k: torch.as_tensor(v[0]) for k, v in fields.items()}
        sample["images"] = x
        return sample


class PilLoader(ShardedLoader):
    """Per-sample PIL decode in DataLoader worker processes.

    ``on_bad_image="skip"``: images that do not decode are found by a pre-scan (as the DALI backend does) and
    left out, like the cache's rejects; under "error" the first one stops the run naming the file and row.
    """

    def __init__(self, data: SplitData, *, aug: AugmentConfig, size: int, batch_size: int, train: bool,
                 rank: int, world: int, seed: int, num_workers: int = 2, prefetch: int = 2, pin_memory: bool = False,
                 sample_weights=None, on_bad_image: str = "error"):
        self.served = np.arange(len(data))  # split positions this loader serves
        if on_bad_image == "skip":
            self.served = _decodable(data, max(1, num_workers))
            sample_weights = served_weights(sample_weights, self.served, len(data))
        super().__init__(len(self.served), batch_size=batch_size, train=train, rank=rank, world=world, seed=seed,
                         sample_weights=sample_weights)
        self.dataset = PilDataset(data, aug, size, train, seed)
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory

    def served_positions(self) -> np.ndarray:
        return self.served

    def _iter_positions(self, positions: np.ndarray, repeats: np.ndarray):
        self.dataset.epoch = self.epoch
        positions = self.served[positions]
        items = list(zip(positions.tolist(), repeats.tolist())) if repeats.any() else positions
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch if self.num_workers else None,
            collate_fn=Batch.collate,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        try:
            yield from loader
        except BadImageError as e:  # from a worker, its message carries the worker's traceback: keep the one line
            raise BadImageError(str(e).strip().splitlines()[-1].split("BadImageError: ", 1)[-1]) from None


def _decodable(data: SplitData, workers: int) -> np.ndarray:
    """Positions of ``data`` whose image decodes; the others are reported (data.on_bad_image=skip)."""
    import logging

    from engine.data.dali import bad_images

    bad = bad_images.scan(data.paths, workers)
    if bad:
        logging.getLogger(__name__).warning(
            "data.on_bad_image=skip: skipping %d undecodable %s images (%s)", len(bad), data.split,
            ", ".join(f"row {int(data.rows[i])}: {data.paths[i]}" for i in sorted(bad)[:5]))
    return np.setdiff1d(np.arange(len(data)), np.fromiter(bad, np.int64, len(bad)))
