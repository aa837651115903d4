"""JPEG records (``cache.storage: jpeg``): encode a decoded record once at build, decode it each time it is read.

Contract: ``encode_record(img, quality)`` takes what ``decode.decode_resized`` returns (uint8 [S, S, 3], HWC
RGB) and returns its baseline JPEG (Pillow/libjpeg-turbo, 4:2:0 chroma, no optimisation passes, so the bytes
are a function of the pixels and the quality: a sharded build and a single one write the same bytes).
A ``RecordDecoder`` turns a batch of those JPEGs back into uint8 [B, S, S, 3] HWC RGB:

    PillowRecords   on the CPU, one record after another into the caller's buffer (libjpeg-turbo; Pillow drops
                    the GIL while it decodes, so the cache loader's gather threads decode batches in parallel)
    DaliRecords     one DALI pipeline per loader: ``device="mixed"`` decodes on the GPU (nvJPEG) straight into a
                    CUDA tensor; ``device="cpu"`` runs DALI's CPU decoder (device_id=None: no GPU needed)

Both decode the same bytes, so a record reads the same every epoch (determinism and resume are the raw
cache's). Against the raw record they differ by the JPEG loss (``TOLERANCE``, at quality 90); nvJPEG and
libjpeg-turbo differ from each other by a little IDCT rounding.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

# |decoded JPEG - raw record| per channel value at quality 90 on the tests' and the demo's photos: the mean, and the
# share of values off by more than 16 (sharp edges, where 4:2:0 chroma loses most)
TOLERANCE = {"mean_abs": 2.5, "frac_over_16": 0.02}
DALI_BATCH = 256  # the most records one DALI run decodes (a loader batch is cut into runs of this size)


def encode_record(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "JPEG", quality=int(quality), subsampling="4:2:0", optimize=False)
    return buf.getvalue()


class PillowRecords:
    """CPU decode of JPEG records into rows of a uint8 buffer."""

    device = "cpu"

    def __init__(self, size: int):
        self.size = size

    def into(self, encoded: list[np.ndarray], out: np.ndarray) -> None:
        """Decode ``encoded[j]`` into ``out[j, :S*S*3]`` (``out``: uint8 [>= B, >= S*S*3])."""
        from PIL import Image

        payload = self.size * self.size * 3
        for j, data in enumerate(encoded):
            with Image.open(io.BytesIO(data)) as im:
                if im.mode != "RGB" or im.size != (self.size, self.size):
                    raise ValueError(f"JPEG record {j}: {im.mode} {im.size}, expected RGB {self.size}x{self.size}")
                out[j, :payload] = np.asarray(im).reshape(-1)


class DaliRecords:
    """DALI decode of JPEG records: ``device="mixed"`` -> CUDA tensor, ``"cpu"`` -> host array."""

    def __init__(self, size: int, device: str = "mixed", threads: int = 2, device_id: Optional[int] = None):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI record decode device {device!r}: expected 'cpu' or 'mixed'")
        self.size, self.device, self.threads = size, device, max(1, threads)
        self.device_id = device_id if device_id is not None or device == "cpu" else 0
        self._pipe = None

    def into(self, encoded: list[np.ndarray], out: np.ndarray) -> None:
        """Host decode into ``out`` rows, as ``PillowRecords.into`` (``device="cpu"`` only)."""
        payload = self.size * self.size * 3
        for b in range(0, len(encoded), DALI_BATCH):
            images = self._run(encoded[b : b + DALI_BATCH])
            for j in range(len(images)):
                out[b + j, :payload] = np.asarray(images[j]).reshape(-1)

    def to_cuda(self, encoded: list[np.ndarray], stream=None):
        """uint8 [B, S, S, 3] CUDA tensor of the decoded records (``device="mixed"``), written on ``stream``."""
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty((len(encoded), self.size, self.size, 3), dtype=torch.uint8, device=f"cuda:{self.device_id}")
        for b in range(0, len(encoded), DALI_BATCH):
            images = self._run(encoded[b : b + DALI_BATCH])
            feed_ndarray(images.as_tensor(), out[b : b + len(images)], cuda_stream=stream)
        return out

    def _run(self, encoded: list[np.ndarray]):
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("encoded", encoded)
        (images,) = self._pipe.run()
        return images

    def _build(self):
        from engine.data.dali.pipelines import import_dali

        pipeline_def, fn, types = import_dali()

        @pipeline_def(batch_size=DALI_BATCH, num_threads=self.threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def _pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            return fn.decoders.image(encoded, device=self.device, output_type=types.RGB)

        pipe = _pipe()
        pipe.build()
        return pipe


def use_loader_decoder(reader, cfg) -> None:
    """Give a jpeg cache's reader the loader's decoder for this process (``cache.decoder``, chosen per card as
    for the build: DALI on a GPU, Pillow on the CPU). The CPU decoder stays Pillow even where ``dali`` is asked
    for: the gather threads share it, and a DALI pipeline serves one thread."""
    if reader.storage != "jpeg":
        return
    from engine import hardware

    choice = hardware.choose_cache_decoder(hardware.device_info(), cfg.cache.decoder)
    if choice["decoder"] == "dali" and choice["device"] == "mixed":
        import torch

        reader.jpeg_decoder = DaliRecords(reader.size, "mixed", cfg.loader.num_workers, torch.cuda.current_device())
