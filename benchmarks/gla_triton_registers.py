"""Registers and spills of our Triton GLA kernels, compiled for a GPU architecture on any machine
(no GPU needed): each kernel is compiled with Triton's ahead-of-time API to PTX and assembled by the
``ptxas`` that ships with Triton, whose ``-v`` report gives registers per thread and spill bytes.
Registers bound how many programs share a multiprocessor (65536 registers each on H100/H200), so this
is a quick check of a kernel change before GPU time is spent on it. DiG's head sizes (dk 32, dv 64;
``--dv`` compiles another value head size, e.g. 32: what a split of the value dimension over two
programs would leave each).

    python benchmarks/gla_triton_registers.py [--arch 90] [--dtype bf16] [--dot bf16-scores] [--chunks 32] \\
        [--warps 4 8] [--kernels sequential] [--bwds fused split onepass] [--maxnreg 0 168] [--prefetch 0 1] \\
        [--dv 64] [--sass] [--lines 15] [--out benchmarks/results/gla_triton_registers.json]

Kernels: the sequential forward and backward (``triton_chunk``) and the parallel ones
(``triton_parallel``), each with and without segments where it has them. Each sequential backward as
``gla_bwd`` launches it: "fused" one kernel, "split" its two passes, "onepass" the chunk-state kernel
and the one-pass kernel. Only the backward kernels take ``PREFETCH``: the others are listed once per
register cap (prefetch "-").

Pointers and strides are compiled divisible by 16 (``tt.divisibility``), as the real launches see
them (``T`` and the flags are not specialised); without these hints the counts run high (e.g. 234
instead of 124 registers for ``_chunk_states_kernel``).

``--sass`` adds a static estimate of the instructions each warp issues per chunk (the backward is
bound by issued instructions, Nsight Compute): ``nvdisasm``'s SASS, every outermost loop's body
(a chunk loop) plus ``LOG2_BT - 1`` more times each loop inside it (the tree levels). Branches inside
a body count as taken, so it is a proxy for comparing variants, not a measurement. ``--lines N``
also spreads that count over the source lines the instructions come from (ptxas ``-lineinfo``,
``nvdisasm -g``; a helper's line where it was inlined) and prints the N heaviest: where a change to a
kernel would save instructions. Its opcode mix matched Nsight Compute's dynamic one on the H200
(fused backward: FMUL, IMAD, FADD, LDS lead both).
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

POINTERS_16 = ["Q", "K", "V", "DO", "O", "DQ", "DK_", "DV_"]  # in the inputs' dtype
POINTERS_32 = ["G", "ST", "GL", "DG", "U", "GS", "S0", "DU"]  # float32 gates, states, dg
# Constants with defaults must be named here: one left out would be compiled as a run-time integer.
FUSED = dict(DQ_PASS=True, DKV_PASS=True, ONEPASS=False)  # gla_bwd(bwd="fused")
SPLIT_DQ = dict(DQ_PASS=True, DKV_PASS=False, ONEPASS=False)  # the two launches of gla_bwd(bwd="split")
SPLIT_DKV = dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=False)
ONEPASS = dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=True)  # gla_bwd(bwd="onepass"), after the chunk states


def _kernels(chunk: int, full: bool, dot: str, dv: int = 64):
    """(name, backward variant or None, jit function, compile-time constants, takes PREFETCH) of every
    kernel, as ``gla_fwd``/``gla_bwd`` launch them."""
    import torch

    from gladiff.ops.gla import triton_chunk as K
    from gladiff.ops.gla import triton_parallel as P

    # The constants gla_fwd/gla_bwd would pass (their _settings, on stand-in tensors of the dtype).
    dtype = torch.float32 if full else torch.bfloat16
    _, meta, _, main = K._settings(torch.empty(1, 1, 1, 32, dtype=dtype), torch.empty(1, 1, 1, dv, dtype=dtype),
                                   chunk, None, None, dot)
    rows = [
        ("sequential fwd", None, K._fwd_kernel, dict(meta, **main, MULTI_SEG=False), False),
        ("sequential fwd (segments)", None, K._fwd_kernel, dict(meta, **main, MULTI_SEG=True), False),
    ]
    for seg in (False, True):
        tag = " (segments)" if seg else ""
        bwd = dict(meta, **main, MULTI_SEG=seg)
        rows += [
            (f"sequential bwd{tag}", "fused", K._bwd_kernel, dict(bwd, **FUSED), True),
            # bwd="split": the same kernel compiled once per pass (gla_bwd launches both in turn).
            (f"sequential bwd split: dq{tag}", "split", K._bwd_kernel, dict(bwd, **SPLIT_DQ), True),
            (f"sequential bwd split: dk/dv/dg{tag}", "split", K._bwd_kernel, dict(bwd, **SPLIT_DKV), True),
            # bwd="onepass": every chunk's start state, then one backwards walk.
            (f"sequential bwd onepass: chunk states{tag}", "onepass", K._chunk_states_kernel,
             dict(meta, MULTI_SEG=seg), False),
            (f"sequential bwd onepass{tag}", "onepass", K._bwd_kernel, dict(bwd, **ONEPASS), True),
        ]
    return rows + [
        ("parallel chunk states (fwd)", None, P._chunk_state_kernel, dict(meta, WITH_GRAD=False), False),
        ("parallel chunk states (bwd)", None, P._chunk_state_kernel, dict(meta, WITH_GRAD=True), False),
        ("parallel state scan", None, P._state_scan_kernel, dict(BK=32, BV=dv, NB=P.SCAN_BLOCK), False),
        ("parallel outputs", None, P._output_kernel, dict(meta, **main), False),
        ("parallel gradients", None, P._grad_kernel, dict(meta, **main), False),
    ]


def _signature(fn, constants, dtype):
    """Triton signature and attributes: pointers and strides (``s*`` but ``scale``) divisible by 16."""
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
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or (name.startswith("s") and name != "scale")}
    return sig, attrs


def ptxas_report(ptx: str, arch: int, maxnreg: int = 0, sass: bool = False) -> dict:
    """``{"registers", "spill_stores", "spill_loads"}`` from ``ptxas -v`` on ``ptx`` (with ``sass``
    also ``"sass"``, ``nvdisasm``'s listing of the cubin)."""
    from triton.backends.nvidia import compiler as nv

    ptxas = Path(nv.get_ptxas(arch).path)  # the ptxas Triton itself uses (shipped in its wheel)
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        cmd = [str(ptxas), f"-arch=sm_{arch}{suffix}", "-v", "-lineinfo", str(src), "-o", str(cubin)]
        if maxnreg:
            cmd.insert(1, f"-maxrregcount={maxnreg}")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        listing = (subprocess.run([str(ptxas.parent / "nvdisasm"), "-c", "-g", str(cubin)], capture_output=True,
                                  text=True, check=True).stdout if sass else None)
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    report = dict(registers=int(regs.group(1)) if regs else None,
                  spill_stores=int(spills.group(1)) if spills else None,
                  spill_loads=int(spills.group(2)) if spills else None)
    if listing is not None:
        report["sass"] = listing
    return report


def chunk_weights(sass: str, levels: int) -> list[tuple[str, tuple[str, int] | None, int]]:
    """``(instruction, (file, line) or None, weight)`` for every instruction of the listing: how many
    times one warp issues it per chunk by the static estimate (see the module's notes): 1 inside an
    outermost loop (the chunk loop), ``levels`` inside a loop within it (the tree), 0 outside loops
    and for ``NOP``. Loops are the spans from a label to a branch back to it."""
    ins, labels, loops, line = [], {}, [], None
    for text in sass.splitlines():
        if where := re.search(r'//## File "([^"]+)", line (\d+)', text):
            line = (Path(where.group(1)).name, int(where.group(2)))
        elif label := re.match(r"\s*(\.L_x_\d+):", text):
            labels[label.group(1)] = len(ins)
        elif op := re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", text):
            ins.append((op.group(1).strip(), line))
            target = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ins[-1][0])
            if target and labels.get(target.group(1), len(ins)) < len(ins) - 1:  # a branch back: a loop
                loops.append((labels[target.group(1)], len(ins) - 1))
    weight = [0] * len(ins)
    for a, b in loops:
        outer = not any(c <= a and b <= d and (c, d) != (a, b) for c, d in loops)
        for i in range(a, b + 1):
            weight[i] = max(weight[i], 1 if outer else levels)
    return [(op, where, 0 if op.startswith("NOP") else w) for (op, where), w in zip(ins, weight)]


def per_chunk(sass: str, levels: int) -> int:
    """Static estimate of the instructions one warp issues per chunk (``chunk_weights`` summed)."""
    return sum(w for _, _, w in chunk_weights(sass, levels))


def heaviest_lines(sass: str, levels: int, n: int) -> list[tuple[int, str]]:
    """The ``n`` source lines with the most instructions per chunk: ``(count, "file:line  text")``."""
    counts = {}
    for _, where, w in chunk_weights(sass, levels):
        if w:
            counts[where] = counts.get(where, 0) + w
    ops = Path(__file__).resolve().parents[1] / "gladiff" / "ops"
    out = []
    for where, count in sorted(counts.items(), key=lambda kv: -kv[1])[:n]:
        text = ""
        if where and (path := next(ops.rglob(where[0]), None)):
            lines = path.read_text().splitlines()
            text = lines[where[1] - 1].strip() if where[1] <= len(lines) else ""
        out.append((count, f"{where[0]}:{where[1]}  {text}" if where else "(no line)"))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="q/k/v dtype")
    parser.add_argument("--chunks", nargs="+", type=int, default=None, help="chunk sizes (default: CONFIG's)")
    parser.add_argument("--dot", default=None, help="operand precision for 16-bit inputs (default: CONFIG's dot)")
    parser.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="only kernels whose name contains one of these texts (default: all)")
    parser.add_argument("--bwds", nargs="+", default=None,
                        help="only these sequential backwards (triton_chunk.BWDS; default: all)")
    parser.add_argument("--maxnreg", "--maxnregs", dest="maxnreg", nargs="+", type=int, default=[0],
                        help="register caps per thread (CONFIG's maxnreg; 0: none)")
    parser.add_argument("--prefetch", nargs="+", type=int, default=None, choices=[0, 1],
                        help="the sequential backward's PREFETCH (default: CONFIG's rule for each cap)")
    parser.add_argument("--dv", type=int, default=64, help="value head size (DiG: 64; a power of two >= 16)")
    parser.add_argument("--sass", action="store_true", help="also estimate the instructions per chunk and warp")
    parser.add_argument("--lines", type=int, default=0, metavar="N",
                        help="with the estimate, print the N source lines with the most instructions per chunk")
    parser.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.compiler import compile as triton_compile
    except ImportError as err:
        print(f"gla_triton_registers: needs Triton ({err})")
        return 0
    from gladiff.ops.gla import triton_chunk as K

    if args.dv < 16 or args.dv & (args.dv - 1):
        parser.error(f"--dv must be a power of two >= 16, got {args.dv}")
    if args.bwds and (unknown := set(args.bwds) - set(K.BWDS)):
        parser.error(f"--bwds: unknown {sorted(unknown)}; choices {K.BWDS}")
    chunks, dot = args.chunks or [K.CONFIG["chunk"]], args.dot or K.CONFIG["dot"]
    print(f"sm_{args.arch}{'a' if args.arch >= 90 else ''}, {args.dtype}, dot {dot}, stages {K.CONFIG['stages']}, dv {args.dv}")
    rows = []
    for chunk in chunks:
        kernels = [k for k in _kernels(chunk, args.dtype == "fp32", dot, args.dv)
                   if (not args.kernels or any(text in k[0] for text in args.kernels))
                   and (not args.bwds or k[1] is None or k[1] in args.bwds)]
        for warps in args.warps:
            for cap in args.maxnreg:
                prefetches = ([bool(p) for p in args.prefetch] if args.prefetch is not None
                              else [K.resolve_prefetch(K.CONFIG["prefetch"], cap)])
                for i, pf in enumerate(prefetches):
                    for name, _, fn, constants, has_prefetch in kernels:
                        if not has_prefetch and i:
                            continue  # no PREFETCH flag: compiled once per cap
                        constants = dict(constants, PREFETCH=pf) if has_prefetch else constants
                        sig, attrs = _signature(fn, constants, args.dtype)
                        src = ASTSource(fn=fn, signature=sig, constexprs=constants, attrs=attrs)
                        options = dict(num_warps=warps, num_stages=K.CONFIG["stages"])
                        if cap:
                            options["maxnreg"] = cap
                        try:
                            compiled = triton_compile(src, target=GPUTarget("cuda", args.arch, 32), options=options)
                            report = ptxas_report(compiled.asm["ptx"], args.arch, cap, args.sass or args.lines > 0)
                        except Exception as err:  # reported per kernel: one that fails to compile is a finding
                            report = dict(error=f"{type(err).__name__}: {str(err)[:300]}")
                        heavy = []
                        if "sass" in report:
                            sass = report.pop("sass")
                            report["instructions_per_chunk"] = per_chunk(sass, chunk.bit_length() - 1)
                            heavy = heaviest_lines(sass, chunk.bit_length() - 1, args.lines) if args.lines else []
                            if heavy:
                                report["heaviest_lines"] = [dict(instructions=c, line=t) for c, t in heavy]
                        rows.append(dict(kernel=name, chunk=chunk, warps=warps, dtype=args.dtype, dot=dot, dv=args.dv,
                                         arch=args.arch, maxnreg=cap, prefetch=pf if has_prefetch else None,
                                         **report))
                        regs = report.get("registers")
                        progs = 65536 // (regs * 32 * warps) if regs else None
                        label = f"prefetch {int(pf) if has_prefetch else '-'}"
                        line = (f"{regs:3d} registers, spills {report['spill_stores']}/{report['spill_loads']} B, "
                                f"<= {progs} programs/SM" if regs else report.get("error", "?"))
                        if "instructions_per_chunk" in report:
                            line += f", ~{report['instructions_per_chunk']} instructions per chunk and warp"
                        print(f"chunk {chunk:2d} warps {warps} maxnreg {cap:3d} {label}  {name:48} {line}",
                              flush=True)
                        for count, text in heavy:
                            print(f"    {count:5d} {100 * count / report['instructions_per_chunk']:5.1f}%  {text[:100]}")
    if args.out:
        from gladiff.bench.common import environment, write_json
        meta = dict(environment(), kind="gla_triton_registers", target=f"sm_{args.arch}",
                    ptxas="the one in Triton's wheel")  # compiled, not run: no card
        print(f"wrote {write_json(args.out, dict(meta, rows=rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
