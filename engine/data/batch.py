"""The one batch contract every loader emits and the training step consumes."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch


@dataclass
class Batch:
    """A batch of samples, all tensors with the same leading dimension B.

    ``images`` is either
      * uint8, NHWC, at the cache's stored size: raw pixels that the training
        step augments on the device (``kernels``), or
      * floating point, NCHW, normalised: already augmented (PIL, DALI backends).
    """

    images: torch.Tensor  # see above
    input_ids: torch.Tensor  # int64 [B, L] token ids (L = model.text_max_length; L = 0 without text)
    attention_mask: torch.Tensor  # int64 [B, L]
    numeric: torch.Tensor  # float32 [B, n_numeric], normalised with train statistics
    categorical: torch.Tensor  # int64 [B, n_categorical], 0 = unknown value
    labels: torch.Tensor  # int64 [B] class indices
    index: torch.Tensor  # int64 [B] manifest row of each sample (global sample id)
    # int64 [B] key of each sample's augmentation draw: ``index``, or index + k * 2**40 for the k-th repeat of a
    # sample in an epoch drawn with replacement (loader.balanced_sampling), so repeats are augmented differently
    aug_key: Optional[torch.Tensor] = None
    # evaluation batches of data.group_captions data (None otherwise): every caption of each image
    captions_ids: Optional[torch.Tensor] = None  # int64 [B, K, L] (K = the split's most captions per image)
    captions_mask: Optional[torch.Tensor] = None  # int64 [B, K, L], zero for padding captions
    caption_count: Optional[torch.Tensor] = None  # int64 [B] captions of each image; k >= count is padding

    def __post_init__(self):
        if self.aug_key is None:
            self.aug_key = self.index

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def needs_augment(self) -> bool:
        return self.images.dtype == torch.uint8

    def to(self, device: torch.device, non_blocking: bool = True) -> "Batch":
        return replace(self, **{f.name: _apply(getattr(self, f.name), lambda t: t.to(device, non_blocking=non_blocking))
                                for f in fields(self)})

    @staticmethod
    def collate(samples: list[dict]) -> "Batch":
        """Stack per-sample dicts (keys = field names; a None value or a missing key leaves the field None)."""
        return Batch(**{name: None if samples[0][name] is None else torch.stack([torch.as_tensor(s[name]) for s in samples])
                        for name in samples[0]})


def _apply(t: Optional[torch.Tensor], fn) -> Optional[torch.Tensor]:
    return None if t is None else fn(t)
