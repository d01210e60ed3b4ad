"""Registers and spills of the sequential GLA kernels (``triton_chunk``) for sm_90a, without a GPU:
compiles each variant with Triton's ahead-of-time API and reads the report of the ``ptxas`` shipped
in the Triton wheel (as ``dwconv_registers.py`` does for the conv). DiG's head sizes (dk 32, dv 64),
bf16 inputs, float32 gates, the default chunk and operand precision.

    python benchmarks/gla_registers.py [--warps 4 8] [--maxnregs 0 168] [--prefetch 0 1] [--bwds fused onepass]

Each backward as ``gla_bwd`` launches it: "fused" one kernel, "split" its two passes, "onepass" the
chunk-state kernel (no prefetch option: listed once per cap) and the one-pass kernel.

``--sass`` adds a static estimate of the instructions each warp issues per chunk (the backward is
bound by issued instructions, Nsight Compute): ``nvdisasm``'s SASS, every outermost loop's body
(a chunk loop) plus ``LOG2_BT - 1`` more times each loop inside it (the tree levels). Branches inside
a body count as taken, so it is a proxy for comparing variants, not a measurement.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--warps", nargs="+", type=int, default=[4])
    parser.add_argument("--maxnregs", nargs="+", type=int, default=[0, 168])
    parser.add_argument("--prefetch", nargs="+", type=int, default=[0, 1], help="the backward's PREFETCH")
    parser.add_argument("--bwds", nargs="+", default=["fused", "onepass"], help="backwards (triton_chunk.BWDS)")
    parser.add_argument("--sass", action="store_true", help="also estimate the instructions per chunk and warp")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gladiff.ops.gla import triton_chunk as K

    if unknown := set(args.bwds) - set(K.BWDS):
        parser.error(f"--bwds: unknown {sorted(unknown)}; choices {K.BWDS}")
    # (name, kernel, its flags) of each backward's launches; the state kernel does not take PREFETCH. Flags
    # with defaults must all be named: one left out would be compiled as a run-time integer.
    backwards = dict(
        fused=[("backward fused", K._bwd_kernel, dict(DQ_PASS=True, DKV_PASS=True, ONEPASS=False))],
        split=[("split dq", K._bwd_kernel, dict(DQ_PASS=True, DKV_PASS=False, ONEPASS=False)),
               ("split dk/dv/dg", K._bwd_kernel, dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=False))],
        onepass=[("chunk states", K._chunk_states_kernel, None),
                 ("backward onepass", K._bwd_kernel, dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=True))])

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    dtypes = dict(Q="*bf16", K="*bf16", V="*bf16", G="*fp32", O="*bf16", DO="*bf16", DQ="*bf16", DK_="*bf16",
                  DV_="*bf16", DG="*fp32", U="*fp32", GS="*fp32", S0="*fp32", DU="*fp32", ST="*fp32", scale="fp32")
    chunk, dot = K.CONFIG["chunk"], K.CONFIG["dot"]
    prec = "tf32" if dot in ("tf32", "bf16-scores") else "bf16"
    aprec = "tf32" if dot == "tf32" else "bf16"
    consts = dict(DK=32, DV=64, BK=32, BV=64, BT=chunk, PREC=prec, MULTI_SEG=False, LOG2_BT=chunk.bit_length() - 1,
                  SPREC="tf32", APREC=aprec)

    def report(fn, extra, warps, maxnreg):
        sig = {}
        consts_ = {name: value for name, value in consts.items() if name in fn.arg_names}
        for name in fn.arg_names:
            sig[name] = "constexpr" if name in consts_ or name in extra else dtypes.get(name, "i32")
        # pointers and strides divisible by 16, as the launches see them (T, flags: not specialised)
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                 if sig[name].startswith("*") or (name.startswith("s") and name != "scale")}
        options = dict(num_warps=warps, num_stages=K.CONFIG["stages"])
        if maxnreg:
            options["maxnreg"] = maxnreg
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={**consts_, **extra}, attrs=attrs),
                                target=GPUTarget("cuda", args.arch, 32), options=options)
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(kernel.asm["ptx"])
            cmd = [str(ptxas), f"-arch=sm_{args.arch}a", "-v", str(ptx), "-o", str(Path(tmp) / "k.o")]
            if maxnreg:
                cmd.insert(1, f"-maxrregcount={maxnreg}")
            out = subprocess.run(cmd, capture_output=True, text=True).stderr
            sass = (subprocess.run([str(ptxas.parent / "nvdisasm"), "-c", str(Path(tmp) / "k.o")], capture_output=True,
                                   text=True, check=True).stdout if args.sass else None)
        regs = re.search(r"Used (\d+) registers", out)
        spill = re.search(r"(\d+) bytes spill stores", out)
        line = f"{regs.group(1) if regs else '?':>4} registers, {spill.group(1) if spill else '?':>4} bytes spilled"
        return line + (f", ~{per_chunk(sass, consts['LOG2_BT']):5d} instructions per chunk and warp" if sass else "")

    print(f"sm_{args.arch}a, chunk {chunk}, dot {dot}")
    for warps in args.warps:
        for cap in args.maxnregs:
            for pf in args.prefetch:
                first = pf == args.prefetch[0]
                kernels = [("forward", K._fwd_kernel, {})] if first else []  # the forward always prefetches
                kernels += [(name, fn, flags if flags is None else dict(flags, PREFETCH=bool(pf)))
                            for bwd in args.bwds for name, fn, flags in backwards[bwd] if first or flags is not None]
                for name, fn, extra in kernels:
                    print(f"  {name:16} {warps} warps, maxnreg {cap:3d}, prefetch {pf if extra is not None else '-'}: "
                          f"{report(fn, extra or {}, warps, cap)}", flush=True)
    return 0


def per_chunk(sass: str, levels: int) -> int:
    """Static estimate of the instructions one warp issues per chunk (see the module's notes): loops
    are the spans from a label to a branch back to it."""
    ins, labels, loops = [], {}, []
    for text in sass.splitlines():
        if label := re.match(r"\s*(\.L_x_\d+):", text):
            labels[label.group(1)] = len(ins)
        elif op := re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", text):
            ins.append(op.group(1).strip())
            target = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ins[-1])
            if target and labels.get(target.group(1), len(ins)) < len(ins) - 1:  # a branch back: a loop
                loops.append((labels[target.group(1)], len(ins) - 1))
    count = lambda a, b: sum(not t.startswith("NOP") for t in ins[a:b + 1])  # noqa: E731
    outer = [(a, b) for a, b in loops if not any(c <= a and b <= d and (c, d) != (a, b) for c, d in loops)]
    return sum(count(a, b) + (levels - 1) * sum(count(c, d) for c, d in loops if a < c and d < b)
               for a, b in outer)


if __name__ == "__main__":
    sys.exit(main())
