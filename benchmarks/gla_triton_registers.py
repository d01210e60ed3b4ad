"""Registers and spills of our Triton GLA kernels, compiled for a GPU architecture on any machine
(no GPU needed): each kernel is compiled by Triton to PTX and assembled by the ``ptxas`` that ships
with Triton, whose ``-v`` report gives registers per thread and spill bytes. Registers bound how many
programs share a multiprocessor (65536 registers each on H100/H200), so this is a quick check of a
kernel change before GPU time is spent on it.

    python benchmarks/gla_triton_registers.py [--arch 90] [--dtype bf16] [--dot tf32] [--chunks 32] [--warps 4 8] \\
        [--kernels sequential] [--maxnreg 168] [--out benchmarks/results/gla_triton_registers.json]

Caveat: integer arguments are compiled as plain 32-bit values, without the divisibility hints a real
launch may add, so the counts can differ slightly from the kernels a GPU run compiles.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, not the interpreter's
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POINTERS_16 = ["Q", "K", "V", "DO", "O", "DQ", "DK_", "DV_"]  # in the inputs' dtype
POINTERS_32 = ["G", "ST", "GL", "DG", "U", "GS", "S0", "DU"]  # float32 gates, states, dg
# Constants with defaults must be named here: one left out would be compiled as a run-time integer.
FUSED = dict(DQ_PASS=True, DKV_PASS=True, ONEPASS=False)  # gla_bwd(bwd="fused")
SPLIT_DQ = dict(DQ_PASS=True, DKV_PASS=False, ONEPASS=False)  # the two launches of gla_bwd(bwd="split")
SPLIT_DKV = dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=False)
ONEPASS = dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=True)  # gla_bwd(bwd="onepass"), after the chunk states


def _kernels(chunk: int, full: bool, dot: str, prefetch: bool):
    """(name, jit function, compile-time constants) of every kernel, as ``gla_fwd``/``gla_bwd`` launch them
    (the sequential backward with ``PREFETCH=prefetch``)."""
    import torch

    from gladiff.ops.gla import triton_chunk as K
    from gladiff.ops.gla import triton_parallel as P

    # The constants gla_fwd/gla_bwd would pass (their _settings, on stand-in tensors of the dtype).
    dtype = torch.float32 if full else torch.bfloat16
    _, meta, _, main = K._settings(torch.empty(1, 1, 1, 32, dtype=dtype), torch.empty(1, 1, 1, 64, dtype=dtype),
                                   chunk, None, None, dot)
    bwd = dict(main, PREFETCH=prefetch)  # the forward has no such flag
    return [
        ("sequential fwd", K._fwd_kernel, dict(meta, **main, MULTI_SEG=False)),
        ("sequential fwd (segments)", K._fwd_kernel, dict(meta, **main, MULTI_SEG=True)),
        ("sequential bwd", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=False, **FUSED)),
        ("sequential bwd (segments)", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=True, **FUSED)),
        # bwd="split": the same kernel compiled once per pass (gla_bwd launches both in turn).
        ("sequential bwd split: dq", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=False, **SPLIT_DQ)),
        ("sequential bwd split: dq (segments)", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=True, **SPLIT_DQ)),
        ("sequential bwd split: dk/dv/dg", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=False, **SPLIT_DKV)),
        ("sequential bwd split: dk/dv/dg (segments)", K._bwd_kernel,
         dict(meta, **bwd, MULTI_SEG=True, **SPLIT_DKV)),
        # bwd="onepass": every chunk's start state, then one backwards walk.
        ("sequential bwd onepass: chunk states", K._chunk_states_kernel, dict(meta, MULTI_SEG=False)),
        ("sequential bwd onepass: chunk states (segments)", K._chunk_states_kernel, dict(meta, MULTI_SEG=True)),
        ("sequential bwd onepass", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=False, **ONEPASS)),
        ("sequential bwd onepass (segments)", K._bwd_kernel, dict(meta, **bwd, MULTI_SEG=True, **ONEPASS)),
        ("parallel chunk states (fwd)", P._chunk_state_kernel, dict(meta, WITH_GRAD=False)),
        ("parallel chunk states (bwd)", P._chunk_state_kernel, dict(meta, WITH_GRAD=True)),
        ("parallel state scan", P._state_scan_kernel, dict(BK=32, BV=64, NB=P.SCAN_BLOCK)),
        ("parallel outputs", P._output_kernel, dict(meta, **main)),
        ("parallel gradients", P._grad_kernel, dict(meta, **main)),
    ]


def _signature(fn, constants, dtype):
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in POINTERS_16:
            sig[name] = f"*{dtype}"
        elif name in POINTERS_32:
            sig[name] = "*fp32"
        else:
            sig[name] = "fp32" if name == "scale" else "i32"
    return sig


def ptxas_report(ptx: str, arch: int) -> dict:
    """``{"registers", "spill_stores", "spill_loads"}`` from ``ptxas -v`` on ``ptx``."""
    from triton.backends.nvidia import compiler as nv

    ptxas = nv.get_ptxas(arch).path  # the ptxas Triton itself uses (shipped in its wheel)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_stores=int(spills.group(1)) if spills else None,
                spill_loads=int(spills.group(2)) if spills else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="q/k/v dtype")
    parser.add_argument("--chunks", nargs="+", type=int, default=[32])
    parser.add_argument("--dot", default="tf32", help="operand precision for 16-bit inputs (CONFIG's dot)")
    parser.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="only kernels whose name contains one of these texts (default: all)")
    parser.add_argument("--maxnreg", type=int, default=0, help="register cap per thread (CONFIG's maxnreg; 0: none)")
    parser.add_argument("--prefetch", type=int, default=None, choices=[0, 1],
                        help="the sequential backward's PREFETCH (default: CONFIG's rule for --maxnreg)")
    parser.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = parser.parse_args(argv)
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.compiler import compile as triton_compile
    except ImportError as err:
        print(f"gla_triton_registers: needs Triton ({err})")
        return 0
    from gladiff.ops.gla import triton_chunk as K

    prefetch = (bool(args.prefetch) if args.prefetch is not None
                else K.resolve_prefetch(K.CONFIG["prefetch"], args.maxnreg))
    rows = []
    for chunk in args.chunks:
        for warps in args.warps:
            for name, fn, constants in _kernels(chunk, args.dtype == "fp32", args.dot, prefetch):
                if args.kernels and not any(text in name for text in args.kernels):
                    continue
                src = ASTSource(fn=fn, signature=_signature(fn, constants, args.dtype), constexprs=constants)
                try:
                    compiled = triton_compile(src, target=GPUTarget("cuda", args.arch, 32),
                                              options=dict(num_warps=warps, num_stages=2,
                                                           **({"maxnreg": args.maxnreg} if args.maxnreg else {})))
                    report = ptxas_report(compiled.asm["ptx"], args.arch)
                except Exception as err:  # reported per kernel: one that fails to compile is a finding
                    report = dict(error=f"{type(err).__name__}: {str(err)[:300]}")
                rows.append(dict(kernel=name, chunk=chunk, warps=warps, dtype=args.dtype, dot=args.dot, arch=args.arch,
                                 maxnreg=args.maxnreg, prefetch=prefetch, **report))
                regs = report.get("registers")
                progs = 65536 // (regs * 32 * warps) if regs else None
                print(f"chunk {chunk:2d} warps {warps}  {name:30} " + (
                    f"{regs:3d} registers, spills {report['spill_stores']}/{report['spill_loads']} B, "
                    f"<= {progs} programs/SM" if regs else report.get("error", "?")), flush=True)
    if args.out:
        from gladiff.bench.common import write_json
        print(f"wrote {write_json(args.out, dict(kind='gla_triton_registers', rows=rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
