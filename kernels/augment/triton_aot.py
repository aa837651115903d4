"""Compile the fused augmentation kernels for real NVIDIA targets, no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not
that Triton's NVIDIA backend accepts them.  This module runs the real compiler
(Triton -> PTX -> cubin through the ``ptxas`` that Triton's wheel ships) for a
chosen compute capability and reads the cubin's resource usage with the
``cuobjdump`` shipped beside it: registers per thread, local memory (register
spills) and shared memory.  No CUDA driver is touched.

    python -m kernels.augment.triton_aot [--caps 80 90] [--json]

The interpreter must be off, since ``triton.jit`` then yields interpretable
functions only: run this as its own process (the test does).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.augment import triton_kernels as tk
from kernels.augment.reference import GRAY

_POINTERS = dict(img="*u8", y0_ptr="*i32", y1_ptr="*i32", wy_ptr="*fp32", x0_ptr="*i32", x1_ptr="*i32",
                 wx_ptr="*fp32", fparams="*fp32", iparams="*i32", gmean="*fp32", partial="*fp32")
_FLOATS = ("m0", "m1", "m2", "sd0", "sd1", "sd2")
_OUT = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def _signature(fn, out_dtype: torch.dtype, constexprs: dict) -> dict:
    """Argument types as a launch from ``apply_triton`` would specialise them (ints fit in i32)."""
    types = {**_POINTERS, "out": _OUT[out_dtype]}
    return {n: "constexpr" if n in constexprs else types.get(n, "fp32" if n in _FLOATS else "i32")
            for n in fn.arg_names}


def _cuobjdump() -> Path:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this Triton build ships no cuobjdump to read cubins with")
    return path


def resource_usage(cubin: bytes) -> dict:
    """Registers, local (spill) and shared bytes of the one function in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    found = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", text)}
    if "reg" not in found:
        raise RuntimeError(f"could not read the resource usage from cuobjdump's output:\n{text}")
    return found


def compile_kernels(capability: int, out_dtype: torch.dtype, train: bool = True) -> list[dict]:
    """Compile both kernels for sm_``capability``; ``train`` turns every jitter/gray/erase branch on, else all off (eval)."""
    flags = dict(DO_BRIGHT=train, DO_CONTRAST=train, DO_SAT=train, DO_HUE=train, DO_GRAY=train, DO_ERASE=train)
    common = dict(G0=GRAY[0], G1=GRAY[1], G2=GRAY[2], UNIT=1.0 / 255.0, BLOCK=tk.BLOCK, **flags)
    kernels = [tk._augment_kernel] + ([tk._gray_sum_kernel] if train else [])  # the sum pass runs with contrast only
    rows = []
    for fn in kernels:
        constexprs = {k: v for k, v in common.items() if k in fn.arg_names}
        src = ASTSource(fn, _signature(fn, out_dtype, constexprs), constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32))
        rows.append(dict(kernel=fn.__name__, sm=capability, out=str(out_dtype).split(".")[-1],
                         mode="train" if train else "eval", num_warps=compiled.metadata.num_warps,
                         **resource_usage(compiled.asm["cubin"])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 61 75 80 90")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    rows = [r for cap in args.caps for dtype in _OUT for train in (True, False)
            for r in compile_kernels(cap, dtype, train)]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"triton {triton.__version__}, BLOCK={tk.BLOCK} output pixels per program")
    print(f"{'kernel':<18}{'sm':>4}{'out':>10}{'mode':>7}{'warps':>7}{'regs':>6}{'local':>7}{'shared':>8}")
    for r in rows:
        print(f"{r['kernel']:<18}{r['sm']:>4}{r['out']:>10}{r['mode']:>7}{r['num_warps']:>7}{r['reg']:>6}"
              f"{r['local']:>7}{r['shared']:>8}")


if __name__ == "__main__":
    main()
