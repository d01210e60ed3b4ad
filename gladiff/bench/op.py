"""The token mixer alone: GLA (each backend, each scan order) against attention (SDPA) at the same
(B, H, T), forward and forward+backward, eager and replayed from a CUDA graph.

GLA runs at DiG's head sizes (dk 32, dv 64, bf16 q/k/v, float32 log-gates as the model makes them);
attention at head dim 64 (bf16, non-causal as in DiT), on the flash and cuDNN SDPA backends.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..ops.gla import gla, resolve_backend, triton_impl
from .common import capture_graph, gpu_time_ms

# The shapes: DiG-S/2 at 256 px batch 32, and at 2048 px batch 1 and 4.
DEFAULT_SHAPES = [(32, 6, 256), (1, 6, 16384), (4, 6, 16384)]
# Targets for GLA fwd+bwd (ms) from the issue.
TARGETS_MS = {(32, 6, 256): 0.25, (1, 6, 16384): 1.0, (4, 6, 16384): 1.25}
# Rotate among input sets so that repeated calls do not just measure a warm L2 cache.
ROTATE_BYTES = 256 * 2**20


def _grid(T: int) -> tuple[int, int]:
    h = int(math.isqrt(T))
    while T % h:
        h -= 1
    return h, T // h


def _gla_inputs(B, H, T, dk, dv, n_sets):
    sets = []
    for _ in range(n_sets):
        q = torch.randn(B, T, H, dk, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, T, H, dk, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, T, H, dv, device="cuda", dtype=torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, H, dk, device="cuda")) / 16
        do = torch.randn(B, T, H, dv, device="cuda", dtype=torch.bfloat16)
        sets.append((q, k, v, g, do))
    return sets


def _attn_inputs(B, H, T, d, n_sets):
    return [tuple(torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            for _ in range(n_sets)]


def _n_sets(bytes_per_set: int) -> int:
    return max(1, min(8, math.ceil(ROTATE_BYTES / bytes_per_set)))


def _time_both(step, n_sets, warmup=5, reps=20):
    """(eager ms, graph ms) per call of ``step(i)``, rotating over ``n_sets`` input sets."""
    state = {"i": 0}

    def eager():
        step(state["i"] % n_sets)
        state["i"] += 1

    def all_sets():
        for i in range(n_sets):
            step(i)

    eager_ms = gpu_time_ms(eager, warmup=warmup, reps=reps)
    try:
        graph = capture_graph(all_sets)
        graph_ms = gpu_time_ms(graph.replay, warmup=2, reps=max(5, reps // 2)) / n_sets
    except Exception as err:  # a backend that cannot be captured is reported, not fatal
        print(f"  (graph capture failed: {type(err).__name__}: {err})")
        graph_ms = None
    return eager_ms, graph_ms


def bench_gla(B, H, T, backend, scan="row", reverse=False, dk=32, dv=64, backward=True):
    """(eager ms, graph ms) of GLA ``backend`` (``"triton-<impl>"``: the Triton backend with kernel
    implementation ``<impl>``, ``"sequential"`` or ``"parallel"``) at ``(B, H, T)``."""
    backend, _, impl = backend.partition("-")
    with triton_impl(impl or None):
        return _bench_gla(B, H, T, backend, scan, reverse, dk, dv, backward)


def _bench_gla(B, H, T, backend, scan, reverse, dk, dv, backward):
    grid = _grid(T)
    per_set = B * T * H * (3 * dk * 2 + dk * 4 + 2 * dv * 2)
    n_sets = _n_sets(per_set)
    sets = _gla_inputs(B, H, T, dk, dv, n_sets)
    if backward:
        for s in sets:
            for x in s[:4]:
                x.requires_grad_(True)

    def step(i):
        q, k, v, g, do = sets[i]
        # check_gates=False: no value check (a device sync) inside the timed calls
        o = gla(q, k, v, g, scan=scan, reverse=reverse, grid=grid, backend=backend, check_gates=False)
        if backward:
            torch.autograd.grad(o, (q, k, v, g), do)

    return _time_both(step, n_sets)


def bench_sdpa(B, H, T, sdpa_backend, d=64, backward=True):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[sdpa_backend]
    n_sets = _n_sets(B * H * T * d * 2 * 4)
    sets = _attn_inputs(B, H, T, d, n_sets)
    if backward:
        for s in sets:
            for x in s[:3]:
                x.requires_grad_(True)

    def step(i):
        q, k, v, do = sets[i]
        with sdpa_kernel(which):
            o = F.scaled_dot_product_attention(q, k, v)
        if backward:
            torch.autograd.grad(o, (q, k, v), do)

    return _time_both(step, n_sets)


def run_op_bench(shapes=None, gla_backends=("triton", "fla"), scans=(("row", False), ("col", True)),
                 sdpa_backends=("flash", "cudnn")) -> list[dict]:
    """Rows of {mixer, backend, scan, B, H, T, pass, eager_ms, graph_ms, target_ms}."""
    shapes = shapes or DEFAULT_SHAPES
    rows = []
    jobs = []
    for (B, H, T) in shapes:
        for backend in gla_backends:
            try:
                resolve_backend(backend.partition("-")[0], "cuda", torch.bfloat16)
            except ValueError as err:
                print(f"skipping GLA backend {backend}: {err}")
                continue
            for scan, reverse in (scans if backend.startswith("triton") else scans[:1]):
                for backward in (False, True):
                    jobs.append(("gla", backend, scan, reverse, B, H, T, backward))
        for sb in sdpa_backends:
            for backward in (False, True):
                jobs.append(("sdpa", sb, None, None, B, H, T, backward))
    for mixer, backend, scan, reverse, B, H, T, backward in tqdm(jobs, desc="op bench"):
        try:
            if mixer == "gla":
                eager, graph = bench_gla(B, H, T, backend, scan, reverse, backward=backward)
            else:
                eager, graph = bench_sdpa(B, H, T, backend, backward=backward)
        except Exception as err:
            print(f"{mixer}/{backend} at {(B, H, T)} failed: {type(err).__name__}: {err}")
            eager = graph = None
        torch.cuda.empty_cache()
        rows.append(dict(mixer=mixer, backend=backend, scan=scan, reverse=reverse, B=B, H=H, T=T,
                         **{"pass": "fwd+bwd" if backward else "fwd"}, eager_ms=eager, graph_ms=graph,
                         target_ms=TARGETS_MS.get((B, H, T)) if (mixer == "gla" and backward) else None))
    return rows


def format_rows(rows) -> str:
    lines = [f"{'mixer':5} {'backend':8} {'scan':9} {'B,H,T':>14} {'pass':8} {'eager ms':>9} {'graph ms':>9} "
             f"{'target':>7}"]
    for r in rows:
        scan = "" if r["scan"] is None else r["scan"] + ("-rev" if r["reverse"] else "")
        fmt = lambda x: "-" if x is None else f"{x:.3f}"
        lines.append(f"{r['mixer']:5} {r['backend']:8} {scan:9} {str((r['B'], r['H'], r['T'])):>14} "
                     f"{r['pass']:8} {fmt(r['eager_ms']):>9} {fmt(r['graph_ms']):>9} {fmt(r['target_ms']):>7}")
    return "\n".join(lines)
