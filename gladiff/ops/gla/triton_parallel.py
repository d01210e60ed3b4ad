"""Chunk-parallel Triton kernels for GLA: every chunk is its own program; only a light state scan
is sequential. Same interface and math as ``triton_chunk`` (whose jit helpers it reuses):

    o_t  = scale * (q_t * exp(b_t)) S_c + sum_{s <= t in chunk} scale * (q_t . k_s * exp(b_t - b_s)) v_s
    S_{c+1} = exp(b_L) * S_c + U_c,   U_c = sum_s (k_s * exp(b_L - b_s))^T v_s

(``b``: the log-gate cumulated along the scan inside chunk ``c``, ``b_L`` its last value, ``S_c`` the
state at the chunk's start.)

Design (why it looks the way it does):

* **Three phases, two of them fully parallel.** (a) one program per (chunk, batch*head) reduces its
  chunk to ``U_c`` and ``b_L`` (in backward also ``dU_c = scale * (q exp(b))^T do``, the chunk's
  gradient on its start state); (b) a scan turns those into chunk-end states (and, reversed, into
  the gradients on chunk-start states); (c) one program per (chunk, batch*head) does all the heavy
  intra-chunk work (outputs, or ``dq, dk, dv, dg``) from the states it needs. The sequential
  kernels' register pressure (state + intra-chunk tiles live together in one long-running program)
  is gone: each program holds either the intra-chunk tiles or a slice of the scan.
* **The scan, parallel over state rows and blocked over chunks.** ``y_c = a_c * y_{c-1} + x_c`` is
  elementwise in the ``dk x dv`` state with a per-row decay ``a_c = exp(b_L,c)``, so one program owns
  one key row (``dv`` values) of one (batch, head) and direction: ``dk`` (padded) x ``B*H`` x 1 or 2
  programs. It walks the chunks in blocks of ``SCAN_BLOCK`` (32; 16 when there are at most 16
  chunks): a block's rows are loaded at once (their latencies overlap) and combined by one
  ``[NB, NB] x [NB, dv]`` product with the decay matrix
  ``M[i, j] = exp(sum_{j < m <= i} b_L,m)`` (the exponent is a masked matmul of same-sign terms, so no
  large cumulative sums are subtracted), plus the carry from the block before. At T=16384 that is
  16 dependent steps instead of 512. For short sequences it is one step, and the phases stay separate
  launches (kernel fusion saves only ~2 launches; not worth a second code path before it is measured).
* **Nothing per chunk is saved for backward.** The chunk-end states live in a transient float32
  buffer ``[dirs, B*H, n_chunks, dk, dv]`` (64 floats per token and head at dk 32, dv 64) that is
  freed after the call; backward rebuilds it with (a) + (b), so the memory kept between forward and
  backward is the inputs only. The "saved" outputs are empty tensors (kept for the op's interface).
* **Exponents never positive**, as in ``triton_chunk``: the intra-chunk part uses its binary tree,
  the state factors are ``exp(b_t)`` and ``exp(b_L - b_t)``, the scan's ``exp`` of masked sums of
  log-gates; masks are applied before the exponential. Scan orders by index arithmetic (``_raster``).
* **Gate gradient** per chunk: ``dg = reverse-cumsum(q*dq - k*dk) + sum_v S_end * dS_end``, the
  second term being the contribution of all later chunks; formed in float32 from float32 ``dq``.
* **Registers.** The gradient kernel computes the state terms first, then ``dq`` and then the scores
  and ``dk`` in two passes over the tree levels (the helpers the sequential backward uses). ptxas
  (sm_90a, 4 warps, bf16 inputs, ``bf16-scores``, with the launches' divisibility hints) rates it at
  254 registers without spills; the output and chunk-state kernels use 56-93 registers, the scan 244
  (it runs few programs), none of them spilling (``benchmarks/gla_triton_registers.py``; the earlier
  counts of 255 / ~200 B and 80-153 were taken without the hints and with tf32 operands).

Launches: forward 3 (chunk states, scan, outputs); backward 3 (chunk states and state gradients,
both scans in one launch, chunk gradients).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import (_RUNTIME_INTS, _head_tiles, _intra_dq, _intra_scores, _intra_scores_dk, _load_gates, _load_rows, _mm,
                           _raster, _settings, _store_rows, _strides)

# Chunks per step of the state scan (a power of two >= 16: it is a matmul dimension).
SCAN_BLOCK = 32
_INTS = _RUNTIME_INTS + ["NC", "BH"]


def _check_scan_block(scan_block):
    if scan_block is not None and scan_block not in (16, 32, 64):
        raise ValueError(f"GLA Triton: scan_block must be 16, 32 or 64 chunks, got {scan_block}")


def state_shapes(B: int, T: int, H: int, dk: int, dv: int, chunk: int | None = None):
    """Shapes of the two tensors ``gla_fwd`` returns for backward: both empty (nothing is saved;
    backward recomputes the chunk states)."""
    return (0,), (0,)


@triton.jit
def _chunk_tokens(c, T, grid_h, grid_w, COL, REVERSE, BT: tl.constexpr):
    """Raster rows (int64) and validity mask of chunk ``c``'s ``BT`` scan positions."""
    pos = c * BT + tl.arange(0, BT)
    mt = pos < T
    return _raster(pos, T, grid_h, grid_w, COL, REVERSE), mt


@triton.jit
def _last_row(x, offs_t, BT: tl.constexpr):
    """Row ``BT-1`` of a ``[BT, n]`` tile (for a cumulative sum: the total, bit-identical to the
    last element so that ``exp(b_L - b_last)`` is exactly 1)."""
    return tl.sum(tl.where(offs_t[:, None] == BT - 1, x, 0.0), axis=0)


@triton.jit
def _state_offset(d, bh, c, BH, NC, BK: tl.constexpr, BV: tl.constexpr):
    """Element offset of state ``[d, bh, c]`` in a ``[dirs, BH, NC, BK, BV]`` buffer."""
    return ((d * BH + bh).to(tl.int64) * NC + c) * (BK * BV)


@triton.jit(do_not_specialize=_INTS)
def _chunk_state_kernel(
    Q, K, V, G, DO, ST, GL,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sdb, sdt, sdh,
    T, H, grid_h, grid_w, COL, REVERSE, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, WITH_GRAD: tl.constexpr,
):
    """Per (chunk c, batch*head): ``ST[0, bh, c] = U_c = (k exp(b_L - b))^T v`` and ``GL[bh, c] = b_L``;
    with ``WITH_GRAD`` also ``ST[1, bh, c] = dU_c = scale * (q exp(b))^T do``."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    rows, mt = _chunk_tokens(c, T, grid_h, grid_w, COL, REVERSE, BT)
    k = _load_rows(K + b_idx * skb + h_idx * skh, rows, skt, offs_k, mt, mk)
    v = _load_rows(V + b_idx * svb + h_idx * svh, rows, svt, offs_v, mt, mv)
    g = _load_gates(G + b_idx * sgb + h_idx * sgh, rows, sgt, offs_k, mt, mk)
    b = tl.cumsum(g, axis=0)
    b_last = _last_row(b, offs_t, BT)
    state_offs = offs_k[:, None] * BV + offs_v[None, :]
    U = _mm(tl.trans(k * tl.exp(b_last[None, :] - b)), v, PREC)
    tl.store(ST + _state_offset(0, bh, c, BH, NC, BK, BV) + state_offs, U)
    tl.store(GL + (bh.to(tl.int64) * NC + c) * BK + offs_k, b_last)
    if WITH_GRAD:
        q = _load_rows(Q + b_idx * sqb + h_idx * sqh, rows, sqt, offs_k, mt, mk)
        do = _load_rows(DO + b_idx * sdb + h_idx * sdh, rows, sdt, offs_v, mt, mv)
        dU = _mm(tl.trans(q * tl.exp(b)), do, PREC) * scale
        tl.store(ST + _state_offset(1, bh, c, BH, NC, BK, BV) + state_offs, dU)


@triton.jit(do_not_specialize=_INTS)
def _state_scan_kernel(ST, GL, NC, BH, BK: tl.constexpr, BV: tl.constexpr, NB: tl.constexpr):
    """In place, for key row ``pid0`` of (batch*head) ``pid1``, direction ``d = pid2``:
    ``y_c = exp(GL_c) * y_prev + x_c`` along the chunks, forwards for ``d = 0`` (chunk updates ->
    chunk-end states) and backwards for ``d = 1`` (chunk state-gradients -> gradients on the chunk
    start states). Blocks of ``NB`` chunks are combined by one matrix product each."""
    kr = tl.program_id(0)
    bh = tl.program_id(1)
    d = tl.program_id(2)
    base = ST + _state_offset(d, bh, 0, BH, NC, BK, BV) + kr * BV
    gl_base = GL + bh.to(tl.int64) * NC * BK + kr
    offs_i = tl.arange(0, NB)
    offs_v = tl.arange(0, BV)
    lower = offs_i[:, None] >= offs_i[None, :]
    # M_exp[i, j] = sum_m lower[i, m] * gl_m * [m > j]: same-sign sums, no cancellation.
    ones_lower = tl.where(lower, 1.0, 0.0)
    strictly_after = offs_i[:, None] > offs_i[None, :]  # [m, j]: m > j
    carry = tl.zeros([BV], dtype=tl.float32)
    for blk in range(0, tl.cdiv(NC, NB)):
        idx = blk * NB + offs_i
        valid = idx < NC
        c = tl.where(valid, idx + d * (NC - 1 - 2 * idx), 0).to(tl.int64)
        x = tl.load(base + c[:, None] * (BK * BV) + offs_v[None, :], mask=valid[:, None], other=0.0)
        gl = tl.load(gl_base + c * BK, mask=valid, other=0.0)
        expo = _mm(ones_lower, tl.where(strictly_after, gl[:, None], 0.0), "ieee")
        M = tl.exp(tl.where(lower, expo, float("-inf")))
        y = _mm(M, x, "ieee") + tl.exp(tl.cumsum(gl, axis=0))[:, None] * carry[None, :]
        tl.store(base + c[:, None] * (BK * BV) + offs_v[None, :], y, mask=valid[:, None])
        # Invalid rows (past the last chunk) have x = 0 and decay 1, so the last row is the carry.
        carry = tl.sum(tl.where(offs_i[:, None] == NB - 1, y, 0.0), axis=0)


@triton.jit
def _load_state(ST, d, bh, c, BH, NC, ok, offs_k, offs_v, BK: tl.constexpr, BV: tl.constexpr):
    """State ``[d, bh, c]`` as a ``[BK, BV]`` tile, zero where ``ok`` is false (``c`` is clamped
    into range, so the address is always valid)."""
    c = tl.minimum(tl.maximum(c, 0), NC - 1)
    ptr = ST + _state_offset(d, bh, c, BH, NC, BK, BV) + offs_k[:, None] * BV + offs_v[None, :]
    return tl.load(ptr, mask=(offs_k[:, None] >= 0) & (offs_v[None, :] >= 0) & ok, other=0.0)


@triton.jit(do_not_specialize=_INTS)
def _output_kernel(
    Q, K, V, G, O, ST,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sob, sot, soh,
    T, H, grid_h, grid_w, COL, REVERSE, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr,
):
    """Outputs of chunk c for one (batch, head): intra-chunk part plus the start state's part."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    rows, mt = _chunk_tokens(c, T, grid_h, grid_w, COL, REVERSE, BT)
    q = _load_rows(Q + b_idx * sqb + h_idx * sqh, rows, sqt, offs_k, mt, mk) * scale
    k = _load_rows(K + b_idx * skb + h_idx * skh, rows, skt, offs_k, mt, mk)
    v = _load_rows(V + b_idx * svb + h_idx * svh, rows, svt, offs_v, mt, mv)
    g = _load_gates(G + b_idx * sgb + h_idx * sgh, rows, sgt, offs_k, mt, mk)
    b = tl.cumsum(g, axis=0)
    # The start state is the previous chunk's end state (zero for the first chunk).
    S = _load_state(ST, 0, bh, c - 1, BH, NC, c > 0, offs_k, offs_v, BK, BV)
    A = _intra_scores(q, k, b, offs_t, BT, BK, LOG2_BT, APREC)
    o = _mm(A, v, APREC) + _mm(q * tl.exp(b), S, SPREC)
    _store_rows(O + b_idx * sob + h_idx * soh, rows, sot, offs_v, mt, mv, o)


@triton.jit(do_not_specialize=_INTS)
def _grad_kernel(
    Q, K, V, G, DO, DQ, DK_, DV_, DG, ST,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sdb, sdt, sdh,
    T, H, grid_h, grid_w, COL, REVERSE, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr,
):
    """``dq, dk, dv, dg`` of chunk c for one (batch, head) from its start state ``S_c``, end state
    ``S_{c+1}`` (``ST[0]``, chunk-end states) and the gradient on its end state (``ST[1]`` holds the
    gradients on chunk *start* states, so it is the next chunk's entry). Gradient outputs are
    contiguous ``[B, T, H, d]``."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    rows, mt = _chunk_tokens(c, T, grid_h, grid_w, COL, REVERSE, BT)
    q = _load_rows(Q + b_idx * sqb + h_idx * sqh, rows, sqt, offs_k, mt, mk) * scale
    k = _load_rows(K + b_idx * skb + h_idx * skh, rows, skt, offs_k, mt, mk)
    g = _load_gates(G + b_idx * sgb + h_idx * sgh, rows, sgt, offs_k, mt, mk)
    b = tl.cumsum(g, axis=0)
    b_last = _last_row(b, offs_t, BT)
    gk_off = b_idx.to(tl.int64) * T * H * DK + h_idx * DK
    gv_off = b_idx.to(tl.int64) * T * H * DV + h_idx * DV
    v = _load_rows(V + b_idx * svb + h_idx * svh, rows, svt, offs_v, mt, mv)
    do = _load_rows(DO + b_idx * sdb + h_idx * sdh, rows, sdt, offs_v, mt, mv)
    # The state terms first, so that each state tile is dead before the intra-chunk tiles are live.
    S = _load_state(ST, 0, bh, c - 1, BH, NC, c > 0, offs_k, offs_v, BK, BV)  # start state
    dq = tl.exp(b) * _mm(do, tl.trans(S), SPREC)
    dS = _load_state(ST, 1, bh, c + 1, BH, NC, c + 1 < NC, offs_k, offs_v, BK, BV)  # on the end state
    decay_k = tl.exp(b_last[None, :] - b)
    dk = decay_k * _mm(v, tl.trans(dS), SPREC)
    dv = _mm(k * decay_k, dS, SPREC)
    # Later chunks contribute sum over their tokens of (q dq - k dk) = <S_end, dS_end> per key channel.
    S = _load_state(ST, 0, bh, c, BH, NC, c >= 0, offs_k, offs_v, BK, BV)  # end state
    tail = tl.sum(S * dS, axis=1)
    P = tl.where(offs_t[:, None] >= offs_t[None, :], _mm(do, tl.trans(v), APREC), 0.0)
    # Two passes over the tree levels (dq; then scores and dk), as the sequential kernel does.
    dq += _intra_dq(P, k, b, offs_t, BT, BK, LOG2_BT, PREC)
    # dg in float32 from float32 dq, dk: q dq - k dk cancels, 16-bit parts would cost its precision.
    # (q_raw * (scale dq) = (scale q_raw) * dq: the scaled q and the unscaled dq.)
    x = q * dq
    _store_rows(DQ + gk_off, rows, H * DK, offs_k, mt, mk, dq * scale)
    A, dk_intra = _intra_scores_dk(q, k, b, P, offs_t, BT, BK, LOG2_BT, PREC, APREC)
    dk += dk_intra
    _store_rows(DK_ + gk_off, rows, H * DK, offs_k, mt, mk, dk)
    dv += _mm(tl.trans(A), do, APREC)
    _store_rows(DV_ + gv_off, rows, H * DV, offs_v, mt, mv, dv)
    dg = tl.cumsum(x - k * dk, axis=0, reverse=True) + tail[None, :]
    _store_rows(DG + gk_off, rows, H * DK, offs_k, mt, mk, dg)


def _chunk_states(q, k, v, g, do, scale, flags, grid_h, grid_w, meta, launch, scan_block):
    """Phases (a) + (b): chunk-end states ``[0]`` (and with ``do``, gradients on chunk start states
    ``[1]``) as a float32 ``[dirs, B*H, n_chunks, BK, BV]`` buffer."""
    B, T, H, _ = q.shape
    BK, BV, chunk = meta["BK"], meta["BV"], meta["BT"]
    nc, bh = triton.cdiv(T, chunk), B * H
    dirs = 1 if do is None else 2
    st = torch.empty(dirs, bh, nc, BK, BV, dtype=torch.float32, device=q.device)
    gl = torch.empty(bh, nc, BK, dtype=torch.float32, device=q.device)
    do_ = k if do is None else do  # a stand-in pointer when there is no output gradient
    _chunk_state_kernel[(nc, bh)](
        q, k, v, g, do_, st, gl, *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(do_),
        T, H, grid_h, grid_w, *flags, nc, bh, float(scale), WITH_GRAD=do is not None, **meta, **launch)
    # Short sequences: a block no longer than the chunk count (16 at least: a matmul dimension).
    nb = scan_block or max(16, min(SCAN_BLOCK, triton.next_power_of_2(nc)))
    _state_scan_kernel[(BK, bh, dirs)](st, gl, nc, bh, BK=BK, BV=BV, NB=nb, **launch)
    return st


def gla_fwd(q, k, v, g, scale: float, scan_col: bool, reverse: bool, grid_h: int, grid_w: int,
            chunk: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
            dot: str | None = None, scan_block: int | None = None):
    """Forward. ``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` (last dim contiguous) ->
    ``(o [B, T, H, dv] in v's dtype, empty, empty)`` (nothing is saved for backward; the two empty
    tensors keep ``triton_chunk``'s interface). Keyword arguments override ``CONFIG`` (tuning) and
    ``SCAN_BLOCK`` (``scan_block``: 16, 32 or 64 chunks per scan step); backward must get the same ones."""
    _check_scan_block(scan_block)
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot)
    flags = (int(scan_col), int(reverse))
    st = _chunk_states(q, k, v, g, None, scale, flags, grid_h, grid_w, meta, launch, scan_block)
    nc = st.shape[2]
    o = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    _output_kernel[(nc, B * H)](
        q, k, v, g, o, st, *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(o),
        T, H, grid_h, grid_w, *flags, nc, B * H, float(scale), **main, **meta, **launch)
    s1, s2 = state_shapes(B, T, H, dk, dv, chunk)
    return o, q.new_empty(s1, dtype=torch.float32), q.new_empty(s2, dtype=torch.float32)


def gla_bwd(q, k, v, g, do, saved1, saved2, scale: float, scan_col: bool, reverse: bool, grid_h: int,
            grid_w: int, chunk: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
            dot: str | None = None, scan_block: int | None = None):
    """Backward: ``(dq, dk, dv, dg)``, contiguous, in the dtypes of ``q, k, v, g``. ``saved1``,
    ``saved2`` (``gla_fwd``'s empty tensors) are unused: the chunk states are recomputed."""
    _check_scan_block(scan_block)
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot)
    if do.stride(-1) != 1:
        do = do.contiguous()
    flags = (int(scan_col), int(reverse))
    st = _chunk_states(q, k, v, g, do, scale, flags, grid_h, grid_w, meta, launch, scan_block)
    nc = st.shape[2]
    dq = torch.empty(B, T, H, dk, dtype=q.dtype, device=q.device)
    dk_ = torch.empty(B, T, H, dk, dtype=k.dtype, device=q.device)
    dv_ = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    dg = torch.empty(B, T, H, dk, dtype=g.dtype, device=q.device)
    _grad_kernel[(nc, B * H)](
        q, k, v, g, do, dq, dk_, dv_, dg, st,
        *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(do),
        T, H, grid_h, grid_w, *flags, nc, B * H, float(scale), **main, **meta, **launch)
    return dq, dk_, dv_, dg
