"""Registers and spills of the depth-wise conv's Triton kernels per tile, without a GPU: compiles
each variant for sm_90a (H100/H200) and reads ptxas's report. Used to pick ``dwconv_triton.CONFIG``
(a memory-bound kernel wants no spills and several programs per SM).

    python benchmarks/dwconv_registers.py [--dtype bf16] [--arch 90]

Uses Triton's ahead-of-time compile API (``triton.compile(ASTSource(...), target=GPUTarget(...))``)
and the ``ptxas`` shipped in the Triton wheel; run outside TRITON_INTERPRET.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FWD = [(16, 64, 4), (8, 128, 4), (32, 64, 8), (32, 64, 4), (16, 128, 4)]
BWD = [(8, 64, 8), (4, 64, 4), (16, 64, 8), (8, 64, 4), (16, 64, 4)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gladiff.ops import dwconv_triton as K

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    ptr = f"*{args.dtype}"
    ints = lambda *names: {n: "i32" for n in names}  # noqa: E731
    sig_fwd = {"x": ptr, "w9": ptr, "bias": ptr, "y": ptr, **ints("sxb", "sxt", "syb", "syt", "T", "H", "W", "D"),
               "HAS_BIAS": "constexpr", "FLIP": "constexpr", "BT": "constexpr", "BD": "constexpr"}
    sig_bwd = {"x": ptr, "dy": ptr, "w9": ptr, "dx": ptr, "part": "*fp32",
               **ints("sxb", "sxt", "sdb", "sdt", "sgb", "sgt", "T", "H", "W", "D", "SPLIT", "NSPLIT"),
               "WRITE_DX": "constexpr", "BT": "constexpr", "BD": "constexpr"}

    def report(fn, sig, consts, warps):
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                target=GPUTarget("cuda", args.arch, 32), options=dict(num_warps=warps))
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(kernel.asm["ptx"])
            out = subprocess.run([str(ptxas), f"-arch=sm_{args.arch}a", "-v", str(ptx), "-o", str(Path(tmp) / "k.o")],
                                 capture_output=True, text=True).stderr
        regs = re.search(r"Used (\d+) registers", out)
        spill = re.search(r"(\d+) bytes spill stores", out)
        return f"{regs.group(1) if regs else '?':>4} registers, {spill.group(1) if spill else '?':>4} bytes spilled"

    print(f"{args.dtype}, sm_{args.arch}a (default: {K.CONFIG})")
    for bt, bd, warps in FWD:
        r = report(K._dwconv_forward, sig_fwd, dict(HAS_BIAS=True, FLIP=False, BT=bt, BD=bd), warps)
        print(f"  forward          tile {bt:3d} x {bd:3d}, {warps} warps: {r}", flush=True)
    for bt, bd, warps in BWD:
        for fused in (True, False):
            r = report(K._dwconv_backward, sig_bwd, dict(WRITE_DX=fused, BT=bt, BD=bd), warps)
            what = "backward (+dx)" if fused else "backward (dW)"
            print(f"  {what:16} tile {bt:3d} x {bd:3d}, {warps} warps: {r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
