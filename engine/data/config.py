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
    # rows that share an image path are one sample with all their texts as captions (Flickr30k-style retrieval data)
    group_captions: bool = False
    classes: Optional[list[str]] = None  # labels to keep; every other label becomes other_name (null = keep all)
    other_name: str = "other"  # the class every label outside data.classes becomes
    # cap on the other class per split: other samples / all samples <= other_ratio after sampling (null = keep all)
    other_ratio: Optional[float] = None
    # k-fold splits of the train split (tools/oof.py): its rows dealt into `folds` stratified folds seeded by
    # run.seed; fold `fold` is the val split, the other folds train; the manifest's val rows are left out
    folds: int = 0  # number of folds of the train split (0 = no folds: the manifest's splits)
    fold: int = 0  # the fold held out as the val split, 0 .. folds - 1

    def __post_init__(self):
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"data.folds must be 0 (off) or >= 2, got {self.folds}")
        if not self.folds and self.fold:
            raise ValueError(f"data.fold={self.fold} needs data.folds (the number of folds)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"data.fold must be in 0..{self.folds - 1} (data.folds={self.folds}), got {self.fold}")
        if self.folds and self.group_captions:
            raise ValueError("data.folds: folds are of rows; fold a data.group_captions manifest by image first")
        for key in ("max_train_samples", "max_val_samples", "max_test_samples"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ValueError(f"data.{key} must be positive or null, got {v}")
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        for key in ("image_column", "label_column", "split_column"):
            if not getattr(self, key):
                raise ValueError(f"data.{key} must name a manifest column, got {getattr(self, key)!r}")
        if self.group_captions and not self.text_column:
            raise ValueError("data.group_captions needs data.text_column (the captions)")
        if self.classes is not None:
            if not self.classes:
                raise ValueError("data.classes is empty: list the classes to keep, or null to keep all")
            if len(set(map(str, self.classes))) != len(self.classes):
                raise ValueError(f"data.classes lists a class twice: {self.classes}")
            if not str(self.other_name).strip() or str(self.other_name) in map(str, self.classes):
                raise ValueError(f"data.other_name={self.other_name!r} must be non-empty and not one of data.classes")
        elif self.other_ratio is not None:
            raise ValueError("data.other_ratio needs data.classes (the classes kept; the rest is the other pool)")
        if self.other_ratio is not None and not 0.0 <= self.other_ratio < 1.0:
            raise ValueError(f"data.other_ratio must be in [0, 1) or null, got {self.other_ratio}")


@dataclass
class CacheConfig:
    dir: str = "cache"  # folder that holds the caches (one subfolder per cache key)
    stored_size: int = 256  # side of the stored square image; > data.image_size keeps crop scale variety
    resize_policy: Literal["crop", "pad"] = "crop"  # shorter side then centre crop, or fit inside with padding
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  # splits the builder caches
    workers: int = 0  # build processes; 0 = all cores
    draft: bool = True  # libjpeg DCT-domain downscaling while decoding big JPEGs
    chunk_size: int = 64  # records per unit of work (and of resumable progress)
    decoder: Literal["auto", "pil", "dali"] = "auto"  # Pillow, or DALI (nvJPEG on a GPU); auto: DALI on a GPU, Pillow on CPU
    # records as raw uint8 (memory-speed reads) or JPEG at jpeg_quality (~8x smaller, decoded by the loader: DALI on
    # a GPU, Pillow on the CPU; cache.decoder picks as for the build)
    storage: Literal["raw", "jpeg"] = "raw"
    jpeg_quality: int = 90  # storage jpeg: libjpeg quality 1-100 (part of the cache key)

    def __post_init__(self):
        if self.stored_size < 8:
            raise ValueError(f"cache.stored_size must be >= 8, got {self.stored_size}")
        if self.workers < 0:
            raise ValueError(f"cache.workers must be >= 0, got {self.workers}")
        if self.chunk_size <= 0:
            raise ValueError(f"cache.chunk_size must be positive, got {self.chunk_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"cache.jpeg_quality must be in 1-100, got {self.jpeg_quality}")
        if not self.dir:
            raise ValueError("cache.dir must not be empty")
        unknown = [s for s in self.splits if s not in ("train", "val", "test")]
        if unknown:
            raise ValueError(f"cache.splits: unknown split(s) {unknown} (one of ['train', 'val', 'test'])")


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
    # training order: random (any sample next; for caches in the page cache) or block (caches larger than memory:
    # blocks of block_size consecutive records in a random order, shuffled within windows of shuffle_window blocks)
    order: Literal["random", "block"] = "random"
    block_size: int = 64  # records per block (order: block); a block is read from disk in one sweep
    shuffle_window: int = 32  # blocks shuffled together (order: block); the window's records must fit in memory
    dali_prealloc_mb: int = 0  # DALI nvJPEG host/device buffer preallocation; 0 = card default
    dali_hw_decoder_load: Optional[float] = None  # share of JPEGs to the A100/H100 hardware decoder; null = per card
    # semantic batches (training): each global batch (batch_size x ranks) draws from groups_per_batch values of this
    # manifest column (e.g. the label), batch_size / groups_per_batch samples of each per rank (sampling.group_epoch_order)
    group_column: Optional[str] = None
    groups_per_batch: Optional[int] = None  # G; batch_size must be a multiple of it

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"loader.batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.num_workers}")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ValueError(f"loader.eval_batch_size must be positive or null, got {self.eval_batch_size}")
        if self.prefetch < 1:
            raise ValueError(f"loader.prefetch must be >= 1, got {self.prefetch}")
        if self.dali_prealloc_mb < 0:
            raise ValueError(f"loader.dali_prealloc_mb must be >= 0, got {self.dali_prealloc_mb}")
        if self.dali_hw_decoder_load is not None and not 0 <= self.dali_hw_decoder_load <= 1:
            raise ValueError(f"loader.dali_hw_decoder_load must be in [0, 1] or null, got {self.dali_hw_decoder_load}")
        if self.block_size <= 0 or self.shuffle_window <= 0:
            raise ValueError(f"loader.block_size and loader.shuffle_window must be positive, got {self.block_size} and "
                             f"{self.shuffle_window}")
        if (self.group_column is None) != (self.groups_per_batch is None):
            raise ValueError("loader.group_column and loader.groups_per_batch go together: set both or neither")
        if self.groups_per_batch is not None:
            if self.groups_per_batch <= 0 or self.batch_size % self.groups_per_batch:
                raise ValueError(f"loader.groups_per_batch={self.groups_per_batch} must be positive and divide "
                                 f"loader.batch_size={self.batch_size} (each group gives batch_size / G samples)")
            if self.balanced_sampling != "none":  # draws with replacement: no longer "every sample once per epoch"
                raise ValueError(f"loader.group_column cannot be combined with loader.balanced_sampling="
                                 f"{self.balanced_sampling!r} (group batches visit every sample once per epoch); "
                                 "set one of them")

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or self.batch_size

    def batch_size_for(self, train: bool) -> int:
        """The per-rank batch of a training or an evaluation loader."""
        return self.batch_size if train else self.eval_bs
