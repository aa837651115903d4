"""Config sections of the data path: the manifest, the decode cache, the loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class DataConfig:
    manifest: str = ""  # CSV or JSON Lines file, one row per sample
    root: str = ""  # image paths in the manifest are relative to this folder ("" = manifest's folder)
    image_column: str = "image"  # relative image path
    text_column: Optional[str] = "text"  # free text; null for image(+tabular)-only data
    numeric_columns: list[str] = field(default_factory=list)  # normalised with train-split statistics
    categorical_columns: list[str] = field(default_factory=list)  # embedded, with an unknown-value slot
    label_column: str = "label"  # class name or integer
    split_column: str = "split"  # train / val / test
    max_train_samples: Optional[int] = None  # seeded subset of train (same on every run and rank)
    max_val_samples: Optional[int] = None  # seeded subset of val
    max_test_samples: Optional[int] = None  # seeded subset of test (its own: a val subset no longer cuts test too)
    image_size: int = 224  # training resolution (crops are taken at this size)
    on_bad_image: Literal["error", "skip"] = "error"  # corrupt/missing images: stop with a report, or skip and list them

    def __post_init__(self):
        for key in ("max_train_samples", "max_val_samples", "max_test_samples"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ValueError(f"data.{key} must be positive or null, got {v}")
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")


@dataclass
class CacheConfig:
    dir: str = "cache"  # folder that holds the caches (one subfolder per cache key)
    stored_size: int = 256  # side of the stored square image; > data.image_size keeps crop scale variety
    resize_policy: Literal["crop", "pad"] = "crop"  # shorter side then centre crop, or fit inside with padding
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # splits the builder caches
    workers: int = 0  # build processes; 0 = all cores
    draft: bool = True  # libjpeg DCT-domain downscaling while decoding big JPEGs
    chunk_size: int = 64  # records per unit of work (and of resumable progress)

    def __post_init__(self):
        if self.stored_size < 8:
            raise ValueError(f"cache.stored_size must be >= 8, got {self.stored_size}")
        if self.workers < 0:
            raise ValueError(f"cache.workers must be >= 0, got {self.workers}")


@dataclass
class LoaderConfig:
    backend: Literal["pil", "cache", "dali", "dali_cache"] = "pil"  # where batches come from
    batch_size: int = 32  # per-rank micro batch
    eval_batch_size: Optional[int] = None  # defaults to batch_size
    num_workers: int = 2  # PIL: DataLoader workers; cache: gather threads; DALI: CPU threads
    prefetch: int = 2  # batches kept ready ahead of the model
    pin_memory: bool = True  # page-locked host buffers (only used with a GPU)
    balanced_sampling: Literal["none", "inverse", "sqrt"] = "none"  # class-balanced training order
    release_pages: bool = False  # cache: unmap read pages as it goes (flat file-backed RSS, ~1/3 slower)
    dali_prealloc_mb: int = 0  # DALI nvJPEG host/device buffer preallocation; 0 = card default
    dali_hw_decoder_load: Optional[float] = None  # share of JPEGs to the A100/H100 hardware decoder; null = per card

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"loader.batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.num_workers}")

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or self.batch_size

    def batch_size_for(self, train: bool) -> int:
        """The per-rank batch of a training or an evaluation loader."""
        return self.batch_size if train else self.eval_bs
