"""Where the Triton kernels run in these tests: on the GPU where the engine would use them, else in the interpreter.

On a machine with a CUDA card that ``engine.hardware`` sends to Triton (sm_80+)
the kernel tests run compiled on that card.  Everywhere else (no GPU, or a
Pascal/Volta/Turing card) they run in Triton's interpreter on CPU tensors.
TRITON_INTERPRET is read when triton is imported, so it is set here, before any
test module imports it; the tests read it back to choose their device.
"""
import os

import torch

from engine import hardware

if not (torch.cuda.is_available() and hardware.triton_supported(hardware.device_info("cuda"))):
    os.environ.setdefault("TRITON_INTERPRET", "1")
