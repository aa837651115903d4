"""Run the Triton kernels in Triton's interpreter when there is no GPU.

TRITON_INTERPRET is read when triton is imported, so it is set here, before
any test module imports it.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

