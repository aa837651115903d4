"""Compile the fused augmentation kernels for real NVIDIA targets, no GPU needed.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not
that Triton's NVIDIA backend accepts them.  This module runs the real compiler
(Triton -> PTX -> cubin through the ``ptxas`` that Triton's wheel ships) for a
chosen compute capability and reads the cubin with the ``cuobjdump`` shipped
beside it: registers per thread, local memory (register spills), shared memory,
and the global loads/stores per thread by width.  No CUDA driver is touched.

Each variant is specialised as Triton's launcher would specialise the typical
launch, a batch of 256 NHWC uint8 256 x 256 images to 224 x 224: integer
arguments equal to 1 become constants, pointers and integers divisible by 16 get
the divisibility hint.

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
from collections import Counter
from pathlib import Path
from typing import Optional

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


def _launch_ints(out_dtype: torch.dtype, layout: str) -> dict[str, int]:
    """The integer arguments of the typical launch (see the module docstring)."""
    H, S = 256, 224  # (a batch of 256 is in the module docstring; no argument depends on it)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    out_strides = torch.empty((1, 3, S, S), dtype=out_dtype, device="meta", memory_format=fmt).stride()
    return dict(S=S, n_tiles=triton.cdiv(S * S, tk.BLOCK), s_ib=H * H * 3, s_iy=H * 3, s_ix=3, s_ic=1,
                **dict(zip(("s_ob", "s_oc", "s_oy", "s_ox"), out_strides)))


def _specialise(fn, out_dtype: torch.dtype, layout: str, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as Triton's launcher would build them for the typical launch."""
    types = {**_POINTERS, "out": _OUT[out_dtype]}
    ints = _launch_ints(out_dtype, layout)
    constexprs = {**constexprs, **{n: 1 for n in fn.arg_names if ints.get(n) == 1}}
    signature, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in constexprs:
            signature[n] = "constexpr"
            continue
        signature[n] = types.get(n, "fp32" if n in _FLOATS else "i32")
        if n in types or (n in ints and ints[n] % 16 == 0):  # torch allocations are 16-byte aligned
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _cuobjdump() -> Path:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this Triton build ships no cuobjdump to read cubins with")
    return path


def _cuobjdump_text(cubin: bytes, what: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(_cuobjdump()), what, f.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers, local (spill) and shared bytes of the one function in ``cubin``."""
    text = _cuobjdump_text(cubin, "--dump-resource-usage")
    found = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", text)}
    if "reg" not in found:
        raise RuntimeError(f"could not read the resource usage from cuobjdump's output:\n{text}")
    return found


def memory_instructions(cubin: bytes) -> Optional[dict[str, int]]:
    """Global loads/stores in the machine code by opcode and width, e.g. {'LDG.E.U8': 48, 'STG.E.U16': 12};
    None where the shipped cuobjdump cannot disassemble the target (CUDA 13's drops sm_7x and older)."""
    try:
        sass = _cuobjdump_text(cubin, "--dump-sass")
    except subprocess.CalledProcessError:
        return None
    return dict(Counter(re.findall(r"\b((?:LDG|STG)\.E[.\w]*)", sass)))


def compile_kernels(capability: int, out_dtype: torch.dtype, layout: str = "nchw", train: bool = True,
                    with_gray_sum: bool = True) -> list[dict]:
    """Compile for sm_``capability``; ``train`` turns every jitter/gray/erase branch on, else all off (eval).
    The gray-sum pass (contrast only) writes no image, so it does not depend on ``out_dtype`` or ``layout``."""
    flags = dict(DO_BRIGHT=train, DO_CONTRAST=train, DO_SAT=train, DO_HUE=train, DO_GRAY=train, DO_ERASE=train)
    common = dict(G0=GRAY[0], G1=GRAY[1], G2=GRAY[2], UNIT=1.0 / 255.0, BLOCK=tk.BLOCK, **flags)
    kernels = [tk._augment_kernel] + ([tk._gray_sum_kernel] if train and with_gray_sum else [])
    rows = []
    for fn in kernels:
        signature, constexprs, attrs = _specialise(fn, out_dtype, layout,
                                                   {k: v for k, v in common.items() if k in fn.arg_names})
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", capability, 32))
        cubin = compiled.asm["cubin"]
        image_out = fn is tk._augment_kernel
        rows.append(dict(kernel=fn.__name__, sm=capability, out=str(out_dtype).split(".")[-1] if image_out else "-",
                         layout=layout if image_out else "-", mode="train" if train else "eval",
                         num_warps=compiled.metadata.num_warps, **resource_usage(cubin),
                         memory=memory_instructions(cubin)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 61 75 80 90")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    rows = []
    for cap in args.caps:
        for i, (dtype, layout) in enumerate((d, lay) for d in _OUT for lay in ("nchw", "channels_last")):
            for train in (True, False):
                rows += compile_kernels(cap, dtype, layout, train, with_gray_sum=i == 0)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"triton {triton.__version__}, BLOCK={tk.BLOCK} output pixels per program; "
          "global loads/stores are per thread (BLOCK / (32 * warps) pixels each)")
    print(f"{'kernel':<18}{'sm':>4}{'out':>10}{'layout':>15}{'mode':>7}{'warps':>7}{'regs':>6}{'local':>7}{'shared':>8}  memory")
    for r in rows:
        mem = "n/a (cuobjdump cannot disassemble this target)" if r["memory"] is None else " ".join(
            f"{k.split('.', 1)[0]}.{k.rsplit('.', 1)[-1] if k.count('.') > 1 else '32'}x{v}"
            for k, v in sorted(r["memory"].items()))
        print(f"{r['kernel']:<18}{r['sm']:>4}{r['out']:>10}{r['layout']:>15}{r['mode']:>7}{r['num_warps']:>7}{r['reg']:>6}"
              f"{r['local']:>7}{r['shared']:>8}  {mem}")


if __name__ == "__main__":
    main()
