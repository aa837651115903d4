"""The batched image augmentation (random resized crop, flip, colour jitter, grayscale, erasing, normalise):
one set of per-sample parameters, two implementations of the same function.

    params.py          per-sample parameters, a pure function of (seed, epoch, sample_id)
    _tables.py         bilinear sampling tables shared by both implementations
    reference.py       the plain-PyTorch reference (CPU and any CUDA card)
    triton_kernels.py  the fused Triton kernels (sm_80+, or anywhere under TRITON_INTERPRET=1); imports triton
    triton_aot.py      ahead-of-time compilation of those kernels for real NVIDIA targets, no GPU needed

Nothing here is imported with the package: ``kernels.Augmenter`` picks the implementation and imports
Triton only when it is used (engine/optional.py says what to install).
"""
