"""Triton kernels for chunked GLA that scan in any SREM order by index arithmetic.

The math (per batch and head, along the scan order, ``b`` = cumulative log-gate inside a chunk)::

    o_t  = scale * (q_t * exp(b_t)) S_in + sum_{s <= t in chunk} scale * (q_t . k_s * exp(b_t - b_s)) v_s
    S_out = exp(b_L) * S_in + sum_s (k_s * exp(b_L - b_s))^T v_s          (b_L: the chunk's last b)

Design (why it looks the way it does):

* **Scan orders without copies.** Tokens stay in raster order in memory; a program walks scan
  positions ``pos`` and loads row ``raster(pos)`` = ``T-1-pos`` (reversed) then
  ``(pos % h) * w + pos // h`` (column-major). Rows of a ``[B, T, H, d]`` tensor are strided by
  ``H*d`` anyway, so a gathered row costs the same as a contiguous one.
* **Chunks of 16 tokens, exact per-channel decay.** Inside a chunk the decay ``exp(b_t - b_s)`` is
  formed per key channel as a ``[16, 16, dk]`` tile, masked *before* the exponential, so every
  exponent is ``<= 0`` however negative the gates are. Everything longer than a chunk goes through
  the carried ``dk x dv`` state, whose factors ``exp(b_t)`` and ``exp(b_L - b_s)`` are ``<= 0`` in
  the exponent too. The cumulative gate sums are taken in registers (never written out).
* **Segments for parallelism.** One program owns one (batch*head, segment) pair and walks the
  segment's chunks in sequence with the state in registers. When there are few (batch, head)
  pairs (long sequences), the sequence is cut into segments: a small kernel first reduces each
  segment to its state update ``U_j`` and total log-decay ``G_j``, and each program rebuilds the
  state at its segment start from those (``S_j = exp(G_{j-1}) S_{j-1} + U_{j-1}``).
* **Backward by recomputation.** Forward saves only the segment-start states (``dk x dv`` per
  segment, not per token). The backward kernel walks its segment forwards (rebuilding the state,
  writing ``dq``), then backwards carrying ``dS`` (writing ``dk``, ``dv``, ``dg``). The gate
  gradient is ``dg = reverse-cumsum(q*dq - k*dk)`` along the scan; its tail beyond a segment is
  ``sum_v S_end * dS_end`` (the gradient of a log-decay applied to the segment's end state).
* **Split backward (option).** ``bwd="split"`` runs the two phases as two launches of the same
  kernel compiled per phase (``DQ_PASS``/``DKV_PASS``): one holds the state, the other its gradient,
  so each keeps fewer tiles live than the fused kernel, which is register-bound. The second launch
  reads the float32 ``q * dq`` the first wrote, and takes ``S_end`` from the next segment's saved
  start state instead of rebuilding it.
* **One-pass backward (option).** ``bwd="onepass"``: a light kernel (``_chunk_states_kernel``: k, v,
  g and one product per chunk) first stores the state before every chunk (float32, ``dk x dv`` per
  chunk, transient); then a single backwards walk per segment computes dq, dk, dv and dg together.
  Phase A's recomputation (``P = do v^T``, the cumulative gates, every tree level's decay factors) is
  gone, each level's factors serve the scores, dk and dq at once (``_intra_grads``), and ``q * dq``
  stays in registers (no float32 round trip, no barrier). The cost: the states' write and read
  (256 B per token and head each way at dk 32 / dv 64: with the state kernel's k, v, g reads about
  the traffic of phase A's inputs and q * dq's round trip, which go), dq's accumulator through the
  tree, and q, k, v, do read twice per step (before and after the tree, so that no copy of them is
  held through it; the second read likely from L1).
* **Prefetch.** A program's chunk steps depend on each other only through the state, so each step
  issues the loads of the next chunk's tiles (in their own dtype) before its own work and converts
  them one step later: the load latency hides behind a step's arithmetic instead of stalling it
  (Nsight Compute, forward at (32,18,256): 35% of stall samples were waits on those loads). The
  forward always prefetches; the backward where it has registers to spare (``prefetch``, below).

Forward launches 1 kernel (2 with segments), backward 1 (2 with segments; split and onepass: one more).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._triton import fix_interpreter_index

# Launch configuration: tokens per chunk (a power of two: the intra-chunk decay is split along a
# binary tree), warps and pipeline stages per program, and the operand precision of the products
# for 16-bit inputs ("tf32": float32 operands, "bf16": operands rounded to bf16, "bf16-scores": bf16
# for the score products only, see `_settings`; float32 inputs always use exact float32 products),
# and the implementation behind the custom ops ("sequential": this module, one program walks a
# segment's chunks; "parallel": `triton_parallel`, fully parallel over chunks with a separate state
# scan), and the sequential implementation's backward ("fused": one kernel walks each segment
# forwards for dq, then backwards for dk/dv/dg; "split": the two walks as two lighter launches;
# "onepass": a kernel stores every chunk's start state, then one backwards walk computes all four;
# fwd+bwd -2 to -4% at three of DiG's four shapes, +2% at (32,18,256) under the cap, for an extra
# launch and a transient state buffer, so not the default: gla_triton_tune_H200_onepass.json).
# GLADIFF_GLA_TRITON="chunk=32,warps=4,stages=2,dot=bf16,impl=parallel,bwd=split" overrides it.
# The default is the fastest configuration of the H200 sweep that passes the bf16 GPU check
# (benchmarks/results/gla_triton_tune_H200_parallel.json, gla_gpu_check_H200_bf16scores.json);
# maxnreg: a cap on registers per thread for every launch (ptxas spills above it; 0: ptxas's
# choice), so that more programs share a multiprocessor (65536 registers: at 4 warps <= 168 fits 3
# programs, <= 128 fits 4). "auto" caps at AUTO_MAXNREG only where that occupancy is needed: a
# sequential-implementation launch at 4 warps with more programs than the uncapped kernels' 2 per
# SM can hold. Measured (fwd+bwd, same runs): the cap of 168 made (32,18,256) 0.651 -> 0.578 ms,
# (1,6,16384) 0.542 -> 0.429, (4,6,16384) 1.606 -> 1.463 (576 / 384 / 768 programs, H200,
# gla_triton_tune_H200_split.json) but (32,6,256) 0.234 -> 0.263 (192 programs on 132 SMs, H100,
# gla_triton_tune_H100_cap_t256.json): with room for every program the cap only adds spills.
# "split" is 1-2% faster than "fused" at 16k tokens and 3-6% slower at 256, so "fused" stays.
# prefetch: whether the sequential backward loads the next chunk's tiles before the current chunk's
# work (the forward and the one-pass state kernel always do; the one-pass walk as phase B does, its
# chunk state loaded where used): "auto" only in launches without a register cap, where it was faster at
# every measured shape (H200, uncapped fused backward: (32,6,256) 0.177 -> 0.171 ms, (32,18,256) 0.512 ->
# 0.492, (1,6,16384) 0.429 -> 0.405, (4,6,16384) 1.232 -> 1.122); under the cap of 168 the prefetched
# tiles spill and it was slower at every shape (0.461 -> 0.516 at (32,18,256);
# gla_triton_tune_H200_prefetch.json).
CONFIG = dict(chunk=32, warps=4, stages=2, dot="bf16-scores", impl="sequential", bwd="fused", maxnreg="auto",
              prefetch="auto")
AUTO_MAXNREG = 168
IMPLS = ("sequential", "parallel")
BWDS = ("fused", "split", "onepass")


def _config_from_env():
    for item in filter(None, os.environ.get("GLADIFF_GLA_TRITON", "").split(",")):
        key, _, value = item.partition("=")
        if key not in CONFIG:
            raise ValueError(f"GLADIFF_GLA_TRITON: unknown key {key!r}; keys: {sorted(CONFIG)}")
        auto = (key, value) in (("maxnreg", "auto"), ("prefetch", "auto"))
        CONFIG[key] = value if key in ("dot", "impl", "bwd") or auto else int(value)
    _check_config(CONFIG["chunk"], CONFIG["dot"])
    if CONFIG["impl"] not in IMPLS:
        raise ValueError(f"GLADIFF_GLA_TRITON: impl must be one of {IMPLS}, got {CONFIG['impl']!r}")
    _check_bwd(CONFIG["bwd"])
    _check_maxnreg(CONFIG["maxnreg"])
    _check_prefetch(CONFIG["prefetch"])


def _check_prefetch(prefetch):
    if prefetch not in ("auto", 0, 1):
        raise ValueError(f"GLA Triton configuration: prefetch must be 'auto', 0 or 1, got {prefetch!r}")


def resolve_prefetch(prefetch, maxnreg: int) -> bool:
    """Whether a backward launch with register cap ``maxnreg`` (0: none) prefetches: ``prefetch`` itself,
    or for ``"auto"`` only without a cap."""
    _check_prefetch(prefetch)
    return bool(prefetch) if prefetch != "auto" else maxnreg == 0


def _check_maxnreg(maxnreg):
    if maxnreg != "auto" and (not isinstance(maxnreg, int) or (maxnreg != 0 and not 32 <= maxnreg <= 255)):
        raise ValueError(f"GLA Triton configuration: maxnreg must be 'auto', 0 (no cap) or 32..255, "
                         f"got {maxnreg!r}")


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def resolve_maxnreg(maxnreg, programs: int | None, num_warps: int, device: torch.device) -> int:
    """The register cap of one launch: ``maxnreg`` itself, or for ``"auto"`` ``AUTO_MAXNREG`` when a
    4-warp launch of ``programs`` programs on a CUDA ``device`` has more programs than the SMs hold
    uncapped (2 each), else 0. ``programs=None`` (launches the rule was not measured for): 0."""
    if maxnreg != "auto":
        return maxnreg
    if programs is None or num_warps != 4 or device.type != "cuda":
        return 0
    return AUTO_MAXNREG if programs > 2 * _sm_count(device.index if device.index is not None else 0) else 0


def _check_bwd(bwd):
    if bwd not in BWDS:
        raise ValueError(f"GLA Triton configuration: bwd must be one of {BWDS}, got {bwd!r}")


DOTS = ("tf32", "bf16", "bf16-scores")


def _check_config(chunk, dot):
    if chunk not in (16, 32, 64) or dot not in DOTS:
        raise ValueError(f"GLA Triton configuration: chunk must be 16, 32 or 64 and dot one of {DOTS}; "
                         f"got chunk={chunk}, dot={dot!r}")
    if dot != "tf32" and chunk > 32:
        # Seen on an H200 with Triton 3.6: the 64-token kernels with bf16 operands fault
        # (illegal memory access) while 16/32 and every tf32 variant run correctly.
        raise ValueError("GLA Triton configuration: bf16 operands need chunk <= 32")


_config_from_env()
# Aim for at least this many programs per launch (H100/H200 have 132 multiprocessors).
TARGET_PROGRAMS = 512
MIN_SEGMENT = 256
# Integer arguments Triton should not specialise on (a value of 1 or a multiple of 16 would otherwise
# compile another kernel): sizes and scan flags vary from call to call.
_RUNTIME_INTS = ["T", "grid_h", "grid_w", "COL", "REVERSE", "SEG", "NSEG"]


def plan_segments(bh: int, T: int, segment: int | None = None, chunk: int | None = None) -> tuple[int, int]:
    """Segment length (a multiple of the chunk) and segment count for ``bh`` sequences of ``T`` tokens.

    Doubles the segment count while there are too few programs to fill the GPU and segments stay at
    least ``MIN_SEGMENT`` long. ``segment`` overrides the length (rounded up to a multiple of the chunk).
    """
    chunk = chunk or CONFIG["chunk"]
    if segment is None:
        nseg = 1
        while bh * nseg < TARGET_PROGRAMS and T // (2 * nseg) >= max(MIN_SEGMENT, chunk):
            nseg *= 2
        seg = triton.cdiv(triton.cdiv(T, nseg), chunk) * chunk
    else:
        seg = max(chunk, triton.cdiv(int(segment), chunk) * chunk)
    return seg, triton.cdiv(T, seg)


@triton.jit
def _raster(pos, T, grid_h, grid_w, COL, REVERSE):
    """Raster index of scan positions ``pos`` (int vector) in one of the four SREM orders
    (``COL``, ``REVERSE``: run-time flags, so one compiled kernel serves all four)."""
    if REVERSE:
        pos = T - 1 - pos
    if COL:
        pos = (pos % grid_h) * grid_w + pos // grid_h
    return pos.to(tl.int64)


@triton.jit
def _head_tiles(bh, H, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    """Batch and head of sequence ``bh``, the token / key / value offsets of a tile and the masks of
    the key and value columns that exist (head sizes are padded to powers of two)."""
    b_idx = bh // H
    h_idx = bh % H
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    return b_idx, h_idx, offs_t, offs_k, offs_v, offs_k < DK, offs_v < DV


@triton.jit
def _chunk_rows(pos, T, grid_h, grid_w, COL, REVERSE):
    """Raster rows (int64) of scan positions ``pos`` (one chunk) and the mask of those inside the sequence."""
    mt = pos < T
    return _raster(pos, T, grid_h, grid_w, COL, REVERSE), mt


@triton.jit
def _advance_state(S, k, v, b, b_last, PREC: tl.constexpr):
    """The state after one chunk: ``S exp(b_L) + sum_s (k_s exp(b_L - b_s))^T v_s`` (``b``: the chunk's
    cumulative log-gates ``[BT, BK]``, ``b_last``: their last row; both exponents <= 0)."""
    kd = k * tl.exp(b_last[None, :] - b)
    return S * tl.exp(b_last)[:, None] + _mm(tl.trans(kd), v, PREC)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """Matrix product with float32 accumulation; ``PREC`` "bf16" rounds the operands to bf16 (for
    16-bit inputs), else it is Triton's float32 input precision ("ieee", "tf32")."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == "bf16-emulated":  # Triton 3.6's CPU interpreter multiplies bf16 blocks wrongly
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _n_chunks(T, t0, SEG, BT: tl.constexpr):
    """Chunks in the segment starting at scan position ``t0`` (the last segment may be short)."""
    n = T - t0
    if n > SEG:
        n = SEG
    return (n + BT - 1) // BT


@triton.jit
def _load_raw(base, rows, stride_t, offs, mask_t, mask_d):
    """``[BT, BD]`` tile of rows ``rows`` (int64) of a ``[T, d]`` view, zero outside, in its own dtype."""
    ptr = base + rows[:, None] * stride_t + offs[None, :]
    return tl.load(ptr, mask=mask_t[:, None] & mask_d[None, :], other=0.0)


@triton.jit
def _load_kvg(k_base, v_base, g_base, rows, mt, skt, svt, sgt, offs_k, offs_v, mk, mv):
    """The raw ``k, v, g`` tiles of one chunk (``_load_raw``: rows ``rows``, mask ``mt``)."""
    return (_load_raw(k_base, rows, skt, offs_k, mt, mk), _load_raw(v_base, rows, svt, offs_v, mt, mv),
            _load_raw(g_base, rows, sgt, offs_k, mt, mk))


@triton.jit
def _load_rows(base, rows, stride_t, offs, mask_t, mask_d):
    """``_load_raw`` as float32."""
    return _load_raw(base, rows, stride_t, offs, mask_t, mask_d).to(tl.float32)


@triton.jit
def _reload_rows(base, rows, stride_t, offs, mask_t, mask_d):
    """``_load_rows`` of a tile already loaded in this chunk step, as its last read (``evict_first``).
    Being a different op, common-subexpression elimination does not merge it into the first load, so
    the tile (in each layout its uses need) is not held in registers in between."""
    ptr = base + rows[:, None] * stride_t + offs[None, :]
    x = tl.load(ptr, mask=mask_t[:, None] & mask_d[None, :], other=0.0, eviction_policy="evict_first")
    return x.to(tl.float32)


# Log-gates below this decay by exactly 0 in float32 (exp(-1e4) underflows), so -inf (a legitimate
# "forget everything") is taken as this: differences of cumulative sums stay finite, where -inf would
# give -inf - -inf = NaN. The kernels are exact for such gates (tested down to -1e4).
GATE_FLOOR = tl.constexpr(-1e4)


@triton.jit
def _gates(raw):
    """Log-gates as loaded -> float32, floored at ``GATE_FLOOR`` (``-inf`` forgets everything either way)."""
    return tl.maximum(raw.to(tl.float32), GATE_FLOOR)


@triton.jit
def _load_gates(base, rows, stride_t, offs, mask_t, mask_d):
    """``_load_rows`` of log-gates, floored at ``GATE_FLOOR``."""
    return _gates(_load_raw(base, rows, stride_t, offs, mask_t, mask_d))


@triton.jit
def _store_rows(base, rows, stride_t, offs, mask_t, mask_d, x):
    ptr = base + rows[:, None] * stride_t + offs[None, :]
    tl.store(ptr, x.to(base.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _level(b, offs_t, sh, BT: tl.constexpr, BK: tl.constexpr):
    """One level of the chunk's binary tree: blocks of ``2**sh`` tokens whose second half queries
    their first half. With ``r`` the last token of the first half, ``exp(b_t - b_s)`` splits into a
    query factor ``exp(b_t - b_r)`` (second-half rows, else 0) and a key factor ``exp(b_r - b_s)``
    (first-half rows, else 0); both exponents are <= 0. Every row is in one half, so one exponential
    per element serves both factors (the exponent chosen per row before it, so it stays <= 0).
    Returns the two ``[BT, BK]`` factors and the ``[BT, BT]`` mask of pairs inside one block."""
    half = 1 << (sh - 1)
    ref = ((offs_t >> sh) << sh) + (half - 1)
    b_ref = tl.gather(b, tl.broadcast_to(ref[:, None], (BT, BK)), axis=0)
    second = ((offs_t & half) != 0)[:, None]
    decay = tl.exp(tl.where(second, b - b_ref, b_ref - b))
    q_decay = tl.where(second, decay, 0.0)
    k_decay = tl.where(second, 0.0, decay)
    same = (offs_t[:, None] >> sh) == (offs_t[None, :] >> sh)
    return q_decay, k_decay, same


@triton.jit
def _intra_scores(q, k, b, offs_t, BT: tl.constexpr, BK: tl.constexpr, LOG2_BT: tl.constexpr,
                  PREC: tl.constexpr):
    """``A[t, s] = sum_d q[t,d] k[s,d] exp(b[t,d] - b[s,d])`` for s <= t inside the chunk, else 0:
    the diagonal directly, every pair s < t at the tree level where t and s part, as a matmul."""
    eye = offs_t[:, None] == offs_t[None, :]
    A = tl.where(eye, tl.sum(q * k, axis=1)[:, None], 0.0)
    for sh in range(1, LOG2_BT + 1):  # a run-time loop keeps one level's tiles live
        q_decay, k_decay, same = _level(b, offs_t, sh, BT, BK)
        A += tl.where(same, _mm(q * q_decay, tl.trans(k * k_decay), PREC), 0.0)
    return A


@triton.jit
def _intra_dq(P, k, b, offs_t, BT: tl.constexpr, BK: tl.constexpr, LOG2_BT: tl.constexpr, PREC: tl.constexpr):
    """Intra-chunk ``dq_t = sum_{s <= t} P[t, s] k_s exp(b_t - b_s)`` for ``P[t, s] = do_t . v_s``
    (causal; unscaled): the diagonal, then each tree level as a matmul."""
    eye = offs_t[:, None] == offs_t[None, :]
    dq = tl.sum(tl.where(eye, P, 0.0), axis=1)[:, None] * k
    for sh in range(1, LOG2_BT + 1):  # a run-time loop keeps one level's tiles live
        q_decay, k_decay, same = _level(b, offs_t, sh, BT, BK)
        dq += q_decay * _mm(tl.where(same, P, 0.0), k * k_decay, PREC)
    return dq


@triton.jit
def _intra_scores_dk(q, k, b, P, offs_t, BT: tl.constexpr, BK: tl.constexpr, LOG2_BT: tl.constexpr,
                     PREC: tl.constexpr, APREC: tl.constexpr):
    """The scores ``A`` of ``_intra_scores`` (``q`` scaled; products in ``APREC``) and the intra-chunk
    ``dk_s = sum_{t >= s} P[t, s] q_t exp(b_t - b_s)`` (in ``PREC``), sharing each tree level's decay
    factors."""
    eye = offs_t[:, None] == offs_t[None, :]
    A = tl.where(eye, tl.sum(q * k, axis=1)[:, None], 0.0)
    dk = tl.sum(tl.where(eye, P, 0.0), axis=0)[:, None] * q
    for sh in range(1, LOG2_BT + 1):  # a run-time loop keeps one level's tiles live
        q_decay, k_decay, same = _level(b, offs_t, sh, BT, BK)
        qq = q * q_decay
        A += tl.where(same, _mm(qq, tl.trans(k * k_decay), APREC), 0.0)
        dk += k_decay * _mm(tl.trans(tl.where(same, P, 0.0)), qq, PREC)
    return A, dk


@triton.jit
def _intra_grads(q, k, b, P, offs_t, BT: tl.constexpr, BK: tl.constexpr, LOG2_BT: tl.constexpr,
                 PREC: tl.constexpr, APREC: tl.constexpr):
    """``_intra_scores_dk``'s ``A`` and ``dk`` and ``_intra_dq``'s ``dq`` (unscaled) in one walk of the
    tree: each level's decay factors, masked ``P`` and decayed ``q`` and ``k`` serve all three."""
    eye = offs_t[:, None] == offs_t[None, :]
    A = tl.where(eye, tl.sum(q * k, axis=1)[:, None], 0.0)
    p_diag = tl.sum(tl.where(eye, P, 0.0), axis=1)[:, None]
    dk = p_diag * q
    dq = p_diag * k
    for sh in range(1, LOG2_BT + 1):  # a run-time loop keeps one level's tiles live
        q_decay, k_decay, same = _level(b, offs_t, sh, BT, BK)
        qq = q * q_decay
        kk = k * k_decay
        Pm = tl.where(same, P, 0.0)
        A += tl.where(same, _mm(qq, tl.trans(kk), APREC), 0.0)
        dk += k_decay * _mm(tl.trans(Pm), qq, PREC)
        dq += q_decay * _mm(Pm, kk, PREC)
    return A, dk, dq


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _segment_state_kernel(
    K, V, G, U, GS,
    skb, skt, skh, svb, svt, svh, sgb, sgt, sgh,
    T, H, grid_h, grid_w, COL, REVERSE, SEG, NSEG,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per (segment j, batch*head): ``U_j = sum_s (k_s exp(G_j - B_s))^T v_s`` and ``G_j`` (the
    segment's summed log-gate), where ``B_s`` is the log-gate cumulated from the segment start."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = _n_chunks(T, j * SEG, SEG, BT)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    S = tl.zeros([BK, BV], dtype=tl.float32)
    gsum = tl.zeros([BK], dtype=tl.float32)
    t0 = j * SEG
    for c in range(0, n_chunks):
        rows, mt = _chunk_rows(t0 + c * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        k = _load_rows(k_base, rows, skt, offs_k, mt, mk)
        v = _load_rows(v_base, rows, svt, offs_v, mt, mv)
        g = _load_gates(g_base, rows, sgt, offs_k, mt, mk)
        b = tl.cumsum(g, axis=0)
        b_last = tl.sum(g, axis=0)
        S = _advance_state(S, k, v, b, b_last, PREC)
        gsum += b_last
    st = (bh * NSEG + j).to(tl.int64)
    tl.store(U + st * BK * BV + offs_k[:, None] * BV + offs_v[None, :], S)
    tl.store(GS + st * BK + offs_k, gsum)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _chunk_states_kernel(
    K, V, G, S0, ST,
    skb, skt, skh, svb, svt, svh, sgb, sgt, sgh,
    T, H, grid_h, grid_w, COL, REVERSE, SEG, NSEG,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, MULTI_SEG: tl.constexpr,
):
    """Per (segment j, batch*head): the state before each of the segment's chunks, for the one-pass
    backward. ``ST``: ``[B*H, cdiv(T, BT), BK, BV]`` float32, chunks numbered along the scan from the
    sequence start (segments are whole chunks, so segment j's first is ``j * SEG / BT``). Starts from
    the segment's saved start state (one segment: zero); the forward's state recurrence without its
    outputs, and without the last chunk's step (no chunk starts after it)."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = _n_chunks(T, j * SEG, SEG, BT)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    state_offs = offs_k[:, None] * BV + offs_v[None, :]
    if MULTI_SEG:
        S = tl.load(S0 + (bh * NSEG + j).to(tl.int64) * BK * BV + state_offs)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    t0 = j * SEG
    st_base = ST + (bh * ((T + BT - 1) // BT) + t0 // BT).to(tl.int64) * BK * BV + state_offs
    tl.store(st_base, S)
    # Prefetch as the forward does: each step loads the next chunk's tiles before its own product.
    rows, mt = _chunk_rows(t0 + offs_t, T, grid_h, grid_w, COL, REVERSE)
    mt = mt & (n_chunks > 1)
    k_raw, v_raw, g_raw = _load_kvg(k_base, v_base, g_base, rows, mt, skt, svt, sgt, offs_k, offs_v, mk, mv)
    for c in range(1, n_chunks):  # the state after chunk c - 1 is the one before chunk c
        rows_n, mt_n = _chunk_rows(t0 + c * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        mt_n = mt_n & (c + 1 < n_chunks)
        k_next, v_next, g_next = _load_kvg(k_base, v_base, g_base, rows_n, mt_n, skt, svt, sgt,
                                           offs_k, offs_v, mk, mv)
        g = _gates(g_raw)
        S = _advance_state(S, k_raw.to(tl.float32), v_raw.to(tl.float32), tl.cumsum(g, axis=0), tl.sum(g, axis=0),
                           PREC)
        tl.store(st_base + c * BK * BV, S)
        k_raw, v_raw, g_raw = k_next, v_next, g_next


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _fwd_kernel(
    Q, K, V, G, O, U, GS, S0,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sob, sot, soh,
    T, H, grid_h, grid_w, COL, REVERSE, SEG, NSEG, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, MULTI_SEG: tl.constexpr,
    LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr,
):
    """Outputs of segment j for one (batch, head); with segments, also stores its start state."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = _n_chunks(T, j * SEG, SEG, BT)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    q_base = Q + b_idx * sqb + h_idx * sqh
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    o_base = O + b_idx * sob + h_idx * soh
    state_offs = offs_k[:, None] * BV + offs_v[None, :]

    S = tl.zeros([BK, BV], dtype=tl.float32)
    if MULTI_SEG:
        # State at this segment's start from the earlier segments' updates.
        for i in range(0, j):
            st = (bh * NSEG + i).to(tl.int64)
            S = S * tl.exp(tl.load(GS + st * BK + offs_k))[:, None] + tl.load(U + st * BK * BV + state_offs)
        tl.store(S0 + (bh * NSEG + j).to(tl.int64) * BK * BV + state_offs, S)

    t0 = j * SEG
    # Each step loads the next chunk's tiles before its own work, so their latency hides behind it
    # (H200: -3 to -13% forward time, benchmarks/results/gla_triton_tune_H200_prefetch.json).
    rows, mt = _chunk_rows(t0 + offs_t, T, grid_h, grid_w, COL, REVERSE)
    q_raw = _load_raw(q_base, rows, sqt, offs_k, mt, mk)
    k_raw, v_raw, g_raw = _load_kvg(k_base, v_base, g_base, rows, mt, skt, svt, sgt, offs_k, offs_v, mk, mv)
    for c in range(0, n_chunks):
        rows_n, mt_n = _chunk_rows(t0 + (c + 1) * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        mt_n = mt_n & (c + 1 < n_chunks)
        q_next = _load_raw(q_base, rows_n, sqt, offs_k, mt_n, mk)
        k_next, v_next, g_next = _load_kvg(k_base, v_base, g_base, rows_n, mt_n, skt, svt, sgt,
                                           offs_k, offs_v, mk, mv)
        q = q_raw.to(tl.float32) * scale
        k = k_raw.to(tl.float32)
        v = v_raw.to(tl.float32)
        g = _gates(g_raw)
        b = tl.cumsum(g, axis=0)
        b_last = tl.sum(g, axis=0)
        A = _intra_scores(q, k, b, offs_t, BT, BK, LOG2_BT, APREC)  # [t, s]
        o = _mm(A, v, APREC) + _mm(q * tl.exp(b), S, SPREC)
        _store_rows(o_base, rows, sot, offs_v, mt, mv, o)
        S = _advance_state(S, k, v, b, b_last, PREC)
        q_raw, k_raw, v_raw, g_raw, rows, mt = q_next, k_next, v_next, g_next, rows_n, mt_n


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _segment_dstate_kernel(
    Q, G, DO, DU,
    sqb, sqt, sqh, sgb, sgt, sgh, sdb, sdt, sdh,
    T, H, grid_h, grid_w, COL, REVERSE, SEG, NSEG, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per (segment j, batch*head): the gradient on the state at segment j's start from the outputs
    inside segment j, ``dU_j = scale * sum_t (q_t exp(B_t))^T do_t`` (``B_t`` cumulated from the start)."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = _n_chunks(T, j * SEG, SEG, BT)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    q_base = Q + b_idx * sqb + h_idx * sqh
    g_base = G + b_idx * sgb + h_idx * sgh
    do_base = DO + b_idx * sdb + h_idx * sdh
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    b_off = tl.zeros([BK], dtype=tl.float32)
    t0 = j * SEG
    for c in range(0, n_chunks):
        rows, mt = _chunk_rows(t0 + c * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        q = _load_rows(q_base, rows, sqt, offs_k, mt, mk)
        g = _load_gates(g_base, rows, sgt, offs_k, mt, mk)
        do = _load_rows(do_base, rows, sdt, offs_v, mt, mv)
        b = tl.cumsum(g, axis=0) + b_off[None, :]
        dS += _mm(tl.trans(q * tl.exp(b)), do, PREC)
        b_off += tl.sum(g, axis=0)
    st = (bh * NSEG + j).to(tl.int64)
    tl.store(DU + st * BK * BV + offs_k[:, None] * BV + offs_v[None, :], dS * scale)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _bwd_kernel(
    Q, K, V, G, DO, DQ, DK_, DV_, DG, S0, DU, GS, ST,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sdb, sdt, sdh,
    T, H, grid_h, grid_w, COL, REVERSE, SEG, NSEG, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, MULTI_SEG: tl.constexpr,
    LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr,
    DQ_PASS: tl.constexpr = True, DKV_PASS: tl.constexpr = True, PREFETCH: tl.constexpr = False,
    ONEPASS: tl.constexpr = False,
):
    """Gradients of segment j for one (batch, head). ``DQ, DK_, DV_, DG`` are contiguous like
    their inputs' shapes, so they share the strides of ``Q``/``V`` rebuilt as contiguous:
    dq/dk/dg use ``[T, H, DK]`` strides, dv ``[T, H, DV]``.

    ``DQ_PASS`` (phase A: dq and the float32 ``q * dq`` into ``DG``) and ``DKV_PASS`` (phase B: dk,
    dv, dg, reading that ``q * dq``) select the phases; both: the fused backward, one launch. The
    split backward launches the kernel twice, ``(True, False)`` then ``(False, True)``: each compiled
    variant keeps only its phase's tiles live (the state ``S`` or its gradient ``dS``, not both), so
    it needs fewer registers, at the cost of a second pass over the inputs. ``PREFETCH``: each step
    loads the next chunk's tiles before its own work (see the module's notes).

    ``ONEPASS`` (with ``(False, True)``): phase B alone computes dq too, from each chunk's start state
    in ``ST`` (written by ``_chunk_states_kernel``), so no phase A and no float32 ``q * dq`` round trip;
    ``DG`` may then be in the gates' dtype."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    n_chunks = _n_chunks(T, j * SEG, SEG, BT)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    q_base = Q + b_idx * sqb + h_idx * sqh
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    do_base = DO + b_idx * sdb + h_idx * sdh
    # Gradient outputs are contiguous [B, T, H, d].
    gk_off = b_idx.to(tl.int64) * T * H * DK + h_idx * DK
    gv_off = b_idx.to(tl.int64) * T * H * DV + h_idx * DV
    dq_base = DQ + gk_off
    dk_base = DK_ + gk_off
    dg_base = DG + gk_off
    dv_base = DV_ + gv_off
    sdk = H * DK
    sdv = H * DV
    state_offs = offs_k[:, None] * BV + offs_v[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]
    t0 = j * SEG
    tl.static_assert(not (ONEPASS and DQ_PASS), "the one-pass backward has no phase A")
    if ONEPASS:  # this segment's chunk start states, chunks numbered from the sequence start
        st_base = ST + (bh * ((T + BT - 1) // BT) + t0 // BT).to(tl.int64) * BK * BV + state_offs

    if DQ_PASS:
        # Phase A: forwards through the segment, rebuilding the state; dq needs only the past.
        if MULTI_SEG:
            S = tl.load(S0 + (bh * NSEG + j).to(tl.int64) * BK * BV + state_offs)
        else:
            S = tl.zeros([BK, BV], dtype=tl.float32)
        if PREFETCH:  # the first chunk's tiles; each step loads the next chunk's before its own work
            rows, mt = _chunk_rows(t0 + offs_t, T, grid_h, grid_w, COL, REVERSE)
            k_raw, v_raw, g_raw = _load_kvg(k_base, v_base, g_base, rows, mt, skt, svt, sgt, offs_k, offs_v, mk, mv)
            do_raw = _load_raw(do_base, rows, sdt, offs_v, mt, mv)
            q_raw = _load_raw(q_base, rows, sqt, offs_k, mt, mk)
        for c in range(0, n_chunks):
            if PREFETCH:
                rows_n, mt_n = _chunk_rows(t0 + (c + 1) * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
                mt_n = mt_n & (c + 1 < n_chunks)
                k_next, v_next, g_next = _load_kvg(k_base, v_base, g_base, rows_n, mt_n, skt, svt, sgt,
                                                   offs_k, offs_v, mk, mv)
                do_next = _load_raw(do_base, rows_n, sdt, offs_v, mt_n, mv)
                q_next = _load_raw(q_base, rows_n, sqt, offs_k, mt_n, mk)
                k = k_raw.to(tl.float32)
                v = v_raw.to(tl.float32)
                g = _gates(g_raw)
                do = do_raw.to(tl.float32)
            else:
                rows, mt = _chunk_rows(t0 + c * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
                k = _load_rows(k_base, rows, skt, offs_k, mt, mk)
                v = _load_rows(v_base, rows, svt, offs_v, mt, mv)
                g = _load_gates(g_base, rows, sgt, offs_k, mt, mk)
                do = _load_rows(do_base, rows, sdt, offs_v, mt, mv)
            b = tl.cumsum(g, axis=0)
            b_last = tl.sum(g, axis=0)
            P = tl.where(causal, _mm(do, tl.trans(v), APREC), 0.0)  # do_t . v_s
            dq = _intra_dq(P, k, b, offs_t, BT, BK, LOG2_BT, PREC)
            dq += tl.exp(b) * _mm(do, tl.trans(S), SPREC)
            dq = dq * scale
            _store_rows(dq_base, rows, sdk, offs_k, mt, mk, dq)
            # q * dq, the query half of dg's summand, kept in float32 (in dg's buffer) for phase B:
            # re-reading a 16-bit dq there would cost dg its precision (q dq - k dk cancels).
            if PREFETCH:
                q_in = q_raw.to(tl.float32)
            else:
                q_in = _load_rows(q_base, rows, sqt, offs_k, mt, mk)
            _store_rows(dg_base, rows, sdk, offs_k, mt, mk, q_in * dq)
            S = _advance_state(S, k, v, b, b_last, PREC)
            if PREFETCH:
                k_raw, v_raw, g_raw, do_raw, q_raw, rows, mt = k_next, v_next, g_next, do_next, q_next, rows_n, mt_n
    elif MULTI_SEG:
        # Without phase A the state at the segment end is the saved start state of the next
        # segment (the last segment has none; its end-state gradient is zero, so r is too).
        S = tl.load(S0 + (bh * NSEG + j + 1).to(tl.int64) * BK * BV + state_offs, mask=j + 1 < NSEG, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)

    if DKV_PASS:
        # Gradient on the state at the segment end, from the later segments.
        dS = tl.zeros([BK, BV], dtype=tl.float32)
        if MULTI_SEG:
            for it in range(0, NSEG - 1 - j):
                st = (bh * NSEG + NSEG - 1 - it).to(tl.int64)
                dS = dS * tl.exp(tl.load(GS + st * BK + offs_k))[:, None] + tl.load(DU + st * BK * BV + state_offs)
        # dg beyond the segment: sum over later tokens of (q dq - k dk) = <S_end, dS_end> per key channel.
        r = tl.sum(S * dS, axis=1)
        if DQ_PASS:
            # Phase B re-reads q * dq written above by other threads of this program (split: by the
            # previous launch, which has finished).
            tl.debug_barrier()

        # Phase B: backwards through the segment, carrying dS.
        if PREFETCH:  # the last chunk's tiles; each step loads the previous chunk's before its own work
            rows, mt = _chunk_rows(t0 + (n_chunks - 1) * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
            q_raw = _load_raw(q_base, rows, sqt, offs_k, mt, mk)
            k_raw, v_raw, g_raw = _load_kvg(k_base, v_base, g_base, rows, mt, skt, svt, sgt, offs_k, offs_v, mk, mv)
            do_raw = _load_raw(do_base, rows, sdt, offs_v, mt, mv)
            if DQ_PASS:
                x_raw = _load_raw(dg_base, rows, sdk, offs_k, mt, mk)
        for it in range(0, n_chunks):
            c = n_chunks - 1 - it
            if PREFETCH:
                rows_n, mt_n = _chunk_rows(t0 + (c - 1) * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
                mt_n = mt_n & (c >= 1)
                q_next = _load_raw(q_base, rows_n, sqt, offs_k, mt_n, mk)
                k_next, v_next, g_next = _load_kvg(k_base, v_base, g_base, rows_n, mt_n, skt, svt, sgt,
                                                   offs_k, offs_v, mk, mv)
                do_next = _load_raw(do_base, rows_n, sdt, offs_v, mt_n, mv)
                q = q_raw.to(tl.float32) * scale
                k = k_raw.to(tl.float32)
                v = v_raw.to(tl.float32)
                g = _gates(g_raw)
                do = do_raw.to(tl.float32)
                if DQ_PASS:
                    x_next = _load_raw(dg_base, rows_n, sdk, offs_k, mt_n, mk)
                    x = x_raw
            else:
                rows, mt = _chunk_rows(t0 + c * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
                q = _load_rows(q_base, rows, sqt, offs_k, mt, mk) * scale
                k = _load_rows(k_base, rows, skt, offs_k, mt, mk)
                v = _load_rows(v_base, rows, svt, offs_v, mt, mv)
                g = _load_gates(g_base, rows, sgt, offs_k, mt, mk)
                do = _load_rows(do_base, rows, sdt, offs_v, mt, mv)
                if DQ_PASS:  # the fused kernel as timed on the H200: q * dq loaded with the inputs
                    x = _load_rows(dg_base, rows, sdk, offs_k, mt, mk)
            b = tl.cumsum(g, axis=0)
            b_last = tl.sum(g, axis=0)
            P = tl.where(causal, _mm(do, tl.trans(v), APREC), 0.0)
            if ONEPASS:
                A, dk, dq = _intra_grads(q, k, b, P, offs_t, BT, BK, LOG2_BT, PREC, APREC)
                # The tiles used after the tree are read again (from L1, most likely), each just before
                # its uses: Triton converts a tile to each layout its uses need where it is loaded, so
                # every copy would stay live through the tree (ptxas sm_90a, spills at 4 warps 408 ->
                # 44 B, capped at 168: 784 -> 452 B; at 8 warps 264 -> 0 B).
                v = _reload_rows(v_base, rows, svt, offs_v, mt, mv)
            else:
                A, dk = _intra_scores_dk(q, k, b, P, offs_t, BT, BK, LOG2_BT, PREC, APREC)
            decay_k = tl.exp(b_last[None, :] - b)
            dk += decay_k * _mm(v, tl.trans(dS), SPREC)
            if ONEPASS:
                q = _reload_rows(q_base, rows, sqt, offs_k, mt, mk) * scale
                k = _reload_rows(k_base, rows, skt, offs_k, mt, mk)
                do = _reload_rows(do_base, rows, sdt, offs_v, mt, mv)
            dv = _mm(tl.trans(A), do, APREC)
            dv += _mm(k * decay_k, dS, SPREC)
            if ONEPASS:
                _store_rows(dv_base, rows, sdv, offs_v, mt, mv, dv)  # before the state tile is loaded
                # dq's inter-chunk term last, so that the chunk's start state is live only here. q is
                # scaled and dq not yet: q * dq = q_raw * (scale dq).
                dq += tl.exp(b) * _mm(do, tl.trans(tl.load(st_base + c * BK * BV)), SPREC)
                x = q * dq - k * dk
                _store_rows(dq_base, rows, sdk, offs_k, mt, mk, dq * scale)
            elif DQ_PASS:
                x = x - k * dk  # q dq - k dk
            else:
                # The split pass loads q * dq where it is used: Triton keeps program order, and
                # loaded with the other inputs this tile stays live through the tree products
                # (ptxas, 4 warps: spills 436 -> 268 B; the fused kernel: 476 -> 248 B, untimed).
                x = _load_rows(dg_base, rows, sdk, offs_k, mt, mk) - k * dk
            dg = tl.cumsum(x, axis=0, reverse=True) + r[None, :]
            r += tl.sum(x, axis=0)
            dS = dS * tl.exp(b_last)[:, None] + _mm(tl.trans(q * tl.exp(b)), do, PREC)
            _store_rows(dk_base, rows, sdk, offs_k, mt, mk, dk)
            if not ONEPASS:
                _store_rows(dv_base, rows, sdv, offs_v, mt, mv, dv)
            _store_rows(dg_base, rows, sdk, offs_k, mt, mk, dg)
            if PREFETCH:
                q_raw, k_raw, v_raw, g_raw, do_raw, rows, mt = q_next, k_next, v_next, g_next, do_next, rows_n, mt_n
                if DQ_PASS:
                    x_raw = x_next


def _launch(kernel, nseg: int, bh: int, *args, **kwargs):
    """One program per (segment, batch*head)."""
    kernel[(nseg, bh)](*args, **kwargs)


# Triton picks the interpreter when the kernels are decorated (TRITON_INTERPRET=1 at import).
_INTERPRET = type(_fwd_kernel).__name__ == "InterpretedFunction"
if _INTERPRET:
    fix_interpreter_index()


def _settings(q, v, chunk, num_warps, num_stages, dot, maxnreg=None, programs=None):
    """Compile-time constants and launch options for one call (``None`` -> ``CONFIG``); ``programs``:
    the launch's program count, for ``maxnreg="auto"``."""
    dk, dv = q.shape[-1], v.shape[-1]
    chunk = chunk or CONFIG["chunk"]
    _check_config(chunk, dot or CONFIG["dot"])
    full = q.dtype == torch.float32 and v.dtype == torch.float32
    # float32 inputs get float32 products; 16-bit inputs tf32 or bf16 operands, but products with
    # the carried state keep tf32 (the state accumulates many tokens). "bf16-scores": bf16 operands
    # only for the score products (A = q k^T decayed, P = do v^T, A v, A^T do: they form o and dv),
    # tf32 for those that form dq and dk, whose difference q dq - k dk is dg (it cancels, so unequal
    # roundings of its two halves cost dg its precision).
    dot = dot or CONFIG["dot"]
    bf16 = "bf16-emulated" if _INTERPRET else "bf16"
    prec = "ieee" if full else {"tf32": "tf32", "bf16": bf16, "bf16-scores": "tf32"}[dot]
    aprec = "ieee" if full else {"tf32": "tf32", "bf16": bf16, "bf16-scores": bf16}[dot]
    meta = dict(DK=dk, DV=dv, BK=max(16, triton.next_power_of_2(dk)), BV=max(16, triton.next_power_of_2(dv)),
                BT=chunk, PREC=prec)
    launch = dict(num_warps=num_warps or CONFIG["warps"], num_stages=num_stages or CONFIG["stages"])
    maxnreg = CONFIG["maxnreg"] if maxnreg is None else maxnreg
    _check_maxnreg(maxnreg)
    maxnreg = resolve_maxnreg(maxnreg, programs, launch["num_warps"], q.device)
    if maxnreg:
        launch["maxnreg"] = maxnreg
    main = dict(LOG2_BT=chunk.bit_length() - 1, SPREC="ieee" if full else "tf32", APREC=aprec)
    return chunk, meta, launch, main


def state_shapes(B: int, T: int, H: int, dk: int, dv: int, segment: int | None = None, chunk: int | None = None):
    """Shapes of the saved segment-start states and segment log-decays (empty with one segment)."""
    _, nseg = plan_segments(B * H, T, segment, chunk)
    if nseg == 1:
        return (0,), (0,)
    bk, bv = max(16, triton.next_power_of_2(dk)), max(16, triton.next_power_of_2(dv))
    return (B * H, nseg, bk, bv), (B * H, nseg, bk)


def _strides(x):
    return x.stride(0), x.stride(1), x.stride(2)


def gla_fwd(q, k, v, g, scale: float, scan_col: bool, reverse: bool, grid_h: int, grid_w: int,
            segment: int | None = None, chunk: int | None = None, num_warps: int | None = None,
            num_stages: int | None = None, dot: str | None = None, maxnreg: int | None = None):
    """Forward. ``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` (last dim contiguous) ->
    ``(o [B, T, H, dv] in v's dtype, segment-start states, segment log-decays)``. The keyword
    arguments override ``CONFIG`` (tuning); backward must be called with the same ones."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    seg, nseg = plan_segments(B * H, T, segment, chunk)
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot, maxnreg, nseg * B * H)
    o = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    s0_shape, gs_shape = state_shapes(B, T, H, dk, dv, segment, chunk)
    s0 = torch.empty(s0_shape, dtype=torch.float32, device=q.device)
    gs = torch.empty(gs_shape, dtype=torch.float32, device=q.device)
    flags = (int(scan_col), int(reverse))
    if nseg > 1:
        u = torch.empty(s0_shape, dtype=torch.float32, device=q.device)
        _launch(_segment_state_kernel, nseg, B * H,
                k, v, g, u, gs, *_strides(k), *_strides(v), *_strides(g),
                T, H, grid_h, grid_w, *flags, seg, nseg, **meta, **launch)
        bufs = (u, gs, s0)
    else:
        # One segment: the state buffers are compiled out; any valid pointer stands in.
        bufs = (o, o, o)
    _launch(_fwd_kernel, nseg, B * H,
            q, k, v, g, o, *bufs,
            *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(o),
            T, H, grid_h, grid_w, *flags, seg, nseg, float(scale), MULTI_SEG=nseg > 1, **main, **meta, **launch)
    return o, s0, gs


def gla_bwd(q, k, v, g, do, s0, gs, scale: float, scan_col: bool, reverse: bool, grid_h: int, grid_w: int,
            segment: int | None = None, chunk: int | None = None, num_warps: int | None = None,
            num_stages: int | None = None, dot: str | None = None, bwd: str | None = None,
            maxnreg: int | None = None):
    """Backward: ``(dq, dk, dv, dg)``, contiguous, in the dtypes of ``q, k, v, g``. ``bwd`` (default
    ``CONFIG["bwd"]``): "fused" (one launch), "split" (a dq launch, then a dk/dv/dg launch) or
    "onepass" (a launch writing every chunk's start state, then one backwards walk for all four); the
    same gradients either way (up to float32 rounding: split and onepass take each segment's end state
    from the saved start states instead of rebuilding it), from the same saved tensors."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    seg, nseg = plan_segments(B * H, T, segment, chunk)
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot, maxnreg, nseg * B * H)
    bwd = bwd or CONFIG["bwd"]
    _check_bwd(bwd)
    prefetch = resolve_prefetch(CONFIG["prefetch"], launch.get("maxnreg", 0))
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq = torch.empty(B, T, H, dk, dtype=q.dtype, device=q.device)
    dk_ = torch.empty(B, T, H, dk, dtype=k.dtype, device=q.device)
    dv_ = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    # dg's buffer doubles as float32 scratch for q * dq between the two phases (one-pass: no phases).
    dg = torch.empty(B, T, H, dk, dtype=g.dtype if bwd == "onepass" else torch.float32, device=q.device)
    flags = (int(scan_col), int(reverse))
    if nseg > 1:
        du = torch.empty_like(s0)
        _launch(_segment_dstate_kernel, nseg, B * H,
                q, g, do, du, *_strides(q), *_strides(g), *_strides(do),
                T, H, grid_h, grid_w, *flags, seg, nseg, float(scale), **meta, **launch)
    else:
        # One segment: the state buffers are compiled out; any valid pointer stands in.
        s0 = du = gs = dq
    st = dq
    if bwd == "onepass":
        # Every chunk's start state (float32, [B*H, chunks, BK, BV]; transient): the backwards walk
        # reads it for dq instead of rebuilding the state in a forwards walk of its own.
        st = torch.empty(B * H, triton.cdiv(T, chunk), meta["BK"], meta["BV"], dtype=torch.float32, device=q.device)
        _launch(_chunk_states_kernel, nseg, B * H,
                k, v, g, s0, st, *_strides(k), *_strides(v), *_strides(g),
                T, H, grid_h, grid_w, *flags, seg, nseg, MULTI_SEG=nseg > 1, **meta, **launch)
    # Split: the dq pass writes dq and q * dq (float32, in dg's buffer); the dk/dv/dg pass, launched
    # after it on the same stream, reads that q * dq back. Fused: both passes in one launch.
    passes = {"split": [dict(DQ_PASS=True, DKV_PASS=False), dict(DQ_PASS=False, DKV_PASS=True)],
              "fused": [dict(DQ_PASS=True, DKV_PASS=True)],
              "onepass": [dict(DQ_PASS=False, DKV_PASS=True, ONEPASS=True)]}[bwd]
    for phase in passes:
        _launch(_bwd_kernel, nseg, B * H,
                q, k, v, g, do, dq, dk_, dv_, dg, s0, du, gs, st,
                *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(do),
                T, H, grid_h, grid_w, *flags, seg, nseg, float(scale), MULTI_SEG=nseg > 1, **phase,
                PREFETCH=prefetch, **main, **meta, **launch)
    return dq, dk_, dv_, dg.to(g.dtype)
