"""Triton kernels for GLA in its quadratic (attention-like) form, for short sequences: no state is
carried from chunk to chunk, so nothing runs in sequence. Same interface as ``triton_chunk``.

Per batch and head, along the scan order, with ``B_t`` the log-gate cumulated from the sequence start::

    o_t = scale * sum_{s <= t} sum_d q_td k_sd exp(B_td - B_sd) v_s

Design (why it looks the way it does):

* **Blocks instead of a recurrence.** The scan positions are cut into blocks of ``BT`` tokens. Pairs
  inside one block use the binary tree of ``triton_chunk`` (exponents never positive). A pair of a
  query block ``i`` and an earlier key block ``j`` splits its decay at one reference position ``r``
  between them, ``exp(B_t - B_r) * exp(B_r - B_s)``, both factors ``<= 1``: a matrix product of a
  decayed query tile and a decayed key tile, like one tile of attention scores. The forward takes
  ``r`` = the token before block ``i`` (the decayed queries are fixed while the program walks the
  key blocks); the backward's dk/dv loop takes ``r`` = the last token of block ``j`` (the decayed
  keys are fixed while it walks the query blocks). The decay between two blocks is the sum of the
  block totals between them, carried as the loop walks away from the program's own block.
* **One program per (block, batch*head)**, ``T / BT`` times more programs than the sequential
  kernels have for a short sequence, and no dependency between them. The forward's program for
  block ``i`` visits ``i`` earlier blocks, so the heaviest blocks are launched first; the backward's
  program for block ``j`` visits the ``j`` earlier blocks (for ``dq``) and the later ones (for
  ``dk, dv``): the same count for every program. The price is quadratic work in ``T``: it pays for
  short sequences only (``MAX_T``; longer ones go to the chunked kernels).
* **dg without a scan.** ``dg = reverse-cumsum(q*dq - k*dk)`` along the whole sequence; the part
  beyond block ``j`` is ``sum_v S_j * dS_j`` (the state at the end of block ``j`` and its gradient),
  and both are sums the program's two loops visit anyway (``S`` over the earlier key blocks, ``dS``
  over the later query blocks), so each program finishes its own ``dg``.
* **Forget gate inside the kernels (option).** With ``gate_logit_normalizer`` set, ``G`` holds the
  gate logits (e.g. bf16 from the low-rank projection) and the kernels form ``logsigmoid(x) / n`` as
  they load it, and the backward returns the gradient on the logits (``dg * sigmoid(-x) / n``): the
  float32 log-gate tensor and its gradient never exist in memory.
* **Nothing is saved for backward** beyond the inputs; the two saved tensors of the op interface are
  empty. Launches: forward 1, backward 1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_chunk import (_RUNTIME_INTS, _chunk_rows, _head_tiles, _intra_dq, _intra_scores, _intra_scores_dk,
                           _load_rows, _mm, _settings, _store_rows, _strides)
from .triton_parallel import _last_row

# Longest sequence the quadratic form is used for by default (work grows as T^2 / BT per sequence;
# the chunked kernels' grows as T). Set from the H200 timings of both (docs/performance.md).
MAX_T = 256
_INTS = _RUNTIME_INTS + ["NB"]


def state_shapes(B: int, T: int, H: int, dk: int, dv: int, chunk: int | None = None):
    """Shapes of the two tensors ``gla_fwd`` returns for backward: both empty (nothing is saved)."""
    return (0,), (0,)


@triton.jit
def _log1p(y):
    """``log(1 + y)`` for ``0 <= y <= 1``, accurate for small ``y`` (Goldberg's correction of ``log``)."""
    u = 1.0 + y
    exact = u == 1.0  # y below half an ulp of 1: log(1 + y) = y to float32 precision
    return tl.where(exact, y, tl.log(u) * (y / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _gate_rows(base, rows, stride_t, offs, mask_t, mask_d, inv_norm, LOGITS: tl.constexpr):
    """``[BT, BK]`` log forget gates of rows ``rows``: loaded as they are, or with ``LOGITS`` formed
    from gate logits ``x`` as ``logsigmoid(x) * inv_norm``; zero outside the sequence and the head."""
    x = _load_rows(base, rows, stride_t, offs, mask_t, mask_d)
    if LOGITS:
        x = (tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))) * inv_norm
        x = tl.where(mask_t[:, None] & mask_d[None, :], x, 0.0)
    return x


@triton.jit(do_not_specialize=_INTS)
def _fwd_kernel(
    Q, K, V, G, O,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sob, sot, soh,
    T, H, grid_h, grid_w, COL, REVERSE, NB, scale, inv_norm,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr, FAST: tl.constexpr,
    LOGITS: tl.constexpr,
):
    """Outputs of query block ``i`` for one (batch, head): the block itself by the tree, then every
    earlier block ``j`` through the reference at the token before block ``i``."""
    bh = tl.program_id(0)
    i = NB - 1 - tl.program_id(1)  # the blocks with the most work first
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    q_base = Q + b_idx * sqb + h_idx * sqh
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    rows, mt = _chunk_rows(i * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
    q = _load_rows(q_base, rows, sqt, offs_k, mt, mk) * scale
    k = _load_rows(k_base, rows, skt, offs_k, mt, mk)
    v = _load_rows(v_base, rows, svt, offs_v, mt, mv)
    b = tl.cumsum(_gate_rows(g_base, rows, sgt, offs_k, mt, mk, inv_norm, LOGITS), axis=0)
    o = _mm(_intra_scores(q, k, b, offs_t, BT, BK, LOG2_BT, APREC, FAST), v, APREC)
    qd = q * tl.exp(b)  # decayed from the reference (the token before block i)
    carry = tl.zeros([BK], dtype=tl.float32)  # log-decay of the blocks between j and i
    for it in range(0, i):
        j = i - 1 - it
        rows_j, mt_j = _chunk_rows(j * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        kj = _load_rows(k_base, rows_j, skt, offs_k, mt_j, mk)
        vj = _load_rows(v_base, rows_j, svt, offs_v, mt_j, mv)
        bj = tl.cumsum(_gate_rows(g_base, rows_j, sgt, offs_k, mt_j, mk, inv_norm, LOGITS), axis=0)
        total = _last_row(bj, offs_t, BT)
        kd = kj * tl.exp(total[None, :] - bj + carry[None, :])  # decayed to the reference
        o += _mm(_mm(qd, tl.trans(kd), APREC), vj, APREC)
        carry += total
    _store_rows(O + b_idx * sob + h_idx * soh, rows, sot, offs_v, mt, mv, o)


@triton.jit(do_not_specialize=_INTS)
def _bwd_kernel(
    Q, K, V, G, DO, DQ, DK_, DV_, DG,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sgb, sgt, sgh, sdb, sdt, sdh,
    T, H, grid_h, grid_w, COL, REVERSE, NB, scale, inv_norm,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, LOG2_BT: tl.constexpr, SPREC: tl.constexpr, APREC: tl.constexpr, FAST: tl.constexpr,
    LOGITS: tl.constexpr,
):
    """``dq, dk, dv, dg`` of block ``j`` for one (batch, head). Gradient outputs are contiguous
    ``[B, T, H, d]``; ``DG`` is float32 (it holds ``q * dq`` between the two halves)."""
    bh = tl.program_id(0)
    j = tl.program_id(1)
    b_idx, h_idx, offs_t, offs_k, offs_v, mk, mv = _head_tiles(bh, H, DK, DV, BT, BK, BV)
    q_base = Q + b_idx * sqb + h_idx * sqh
    k_base = K + b_idx * skb + h_idx * skh
    v_base = V + b_idx * svb + h_idx * svh
    g_base = G + b_idx * sgb + h_idx * sgh
    do_base = DO + b_idx * sdb + h_idx * sdh
    gk_off = b_idx.to(tl.int64) * T * H * DK + h_idx * DK
    gv_off = b_idx.to(tl.int64) * T * H * DV + h_idx * DV
    causal = offs_t[:, None] >= offs_t[None, :]
    rows, mt = _chunk_rows(j * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
    k = _load_rows(k_base, rows, skt, offs_k, mt, mk)
    v = _load_rows(v_base, rows, svt, offs_v, mt, mv)
    do = _load_rows(do_base, rows, sdt, offs_v, mt, mv)
    b = tl.cumsum(_gate_rows(g_base, rows, sgt, offs_k, mt, mk, inv_norm, LOGITS), axis=0)
    total = _last_row(b, offs_t, BT)
    kh = k * tl.exp(total[None, :] - b)  # keys decayed to the end of block j

    # dq: the block itself (tree), then the earlier key blocks through the token before block j.
    P = tl.where(causal, _mm(do, tl.trans(v), APREC), 0.0)  # do_t . v_s
    dq = _intra_dq(P, k, b, offs_t, BT, BK, LOG2_BT, PREC, FAST)
    dqd = tl.zeros([BT, BK], dtype=tl.float32)
    S = tl.zeros([BK, BV], dtype=tl.float32)  # earlier blocks' part of the state at the block start
    carry = tl.zeros([BK], dtype=tl.float32)
    for it in range(0, j):
        jj = j - 1 - it
        rows_j, mt_j = _chunk_rows(jj * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        kj = _load_rows(k_base, rows_j, skt, offs_k, mt_j, mk)
        vj = _load_rows(v_base, rows_j, svt, offs_v, mt_j, mv)
        bj = tl.cumsum(_gate_rows(g_base, rows_j, sgt, offs_k, mt_j, mk, inv_norm, LOGITS), axis=0)
        tj = _last_row(bj, offs_t, BT)
        kd = kj * tl.exp(tj[None, :] - bj + carry[None, :])
        dqd += _mm(_mm(do, tl.trans(vj), APREC), kd, PREC)
        S += _mm(tl.trans(kd), vj, PREC)
        carry += tj
    dq = (dq + tl.exp(b) * dqd) * scale
    _store_rows(DQ + gk_off, rows, H * DK, offs_k, mt, mk, dq)
    q = _load_rows(q_base, rows, sqt, offs_k, mt, mk)
    # q * dq in float32 (in dg's buffer) for dg: q dq - k dk cancels, so a 16-bit dq would cost dg
    # its precision; stored rather than kept live through the second loop.
    _store_rows(DG + gk_off, rows, H * DK, offs_k, mt, mk, q * dq)
    # The state at the end of block j: the earlier blocks' part decayed through block j, plus block j's.
    S = S * tl.exp(total)[:, None] + _mm(tl.trans(kh), v, PREC)

    # dk, dv: the block itself (tree), then the later query blocks through the end of block j.
    q = q * scale
    A, dk = _intra_scores_dk(q, k, b, P, offs_t, BT, BK, LOG2_BT, PREC, APREC, FAST)
    dv = _mm(tl.trans(A), do, APREC)
    dkh = tl.zeros([BT, BK], dtype=tl.float32)
    dS = tl.zeros([BK, BV], dtype=tl.float32)  # gradient on the state at the end of block j
    carry = tl.zeros([BK], dtype=tl.float32)
    for i in range(j + 1, NB):
        rows_i, mt_i = _chunk_rows(i * BT + offs_t, T, grid_h, grid_w, COL, REVERSE)
        qi = _load_rows(q_base, rows_i, sqt, offs_k, mt_i, mk) * scale
        doi = _load_rows(do_base, rows_i, sdt, offs_v, mt_i, mv)
        bi = tl.cumsum(_gate_rows(g_base, rows_i, sgt, offs_k, mt_i, mk, inv_norm, LOGITS), axis=0)
        qh = qi * tl.exp(bi + carry[None, :])  # queries decayed from the end of block j
        dv += _mm(tl.trans(_mm(qh, tl.trans(kh), APREC)), doi, APREC)
        dkh += _mm(tl.trans(_mm(doi, tl.trans(v), APREC)), qh, PREC)
        dS += _mm(tl.trans(qh), doi, PREC)
        carry += _last_row(bi, offs_t, BT)
    dk += tl.exp(total[None, :] - b) * dkh
    _store_rows(DK_ + gk_off, rows, H * DK, offs_k, mt, mk, dk)
    _store_rows(DV_ + gv_off, rows, H * DV, offs_v, mt, mv, dv)

    # dg = reverse-cumsum(q dq - k dk) in the block plus everything after it: <S_end, dS_end>.
    x = _load_rows(DG + gk_off, rows, H * DK, offs_k, mt, mk) - k * dk
    dg = tl.cumsum(x, axis=0, reverse=True) + tl.sum(S * dS, axis=1)[None, :]
    if LOGITS:  # d logsigmoid(x) / dx = sigmoid(-x)
        logit = _load_rows(g_base, rows, sgt, offs_k, mt, mk)
        dg = dg * inv_norm / (1.0 + tl.exp(logit))
    _store_rows(DG + gk_off, rows, H * DK, offs_k, mt, mk, dg)


def _inv_norm(gate_logit_normalizer: float) -> float:
    """``1 / n`` for gate logits normalised by ``n``; 0 means ``g`` holds log-gates already."""
    return 1.0 / gate_logit_normalizer if gate_logit_normalizer else 0.0


def gla_fwd(q, k, v, g, scale: float, scan_col: bool, reverse: bool, grid_h: int, grid_w: int,
            gate_logit_normalizer: float = 0.0, chunk: int | None = None, num_warps: int | None = None,
            num_stages: int | None = None, dot: str | None = None, intra: str | None = None):
    """Forward. ``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` (last dim contiguous) ->
    ``(o [B, T, H, dv] in v's dtype, empty, empty)``. ``g`` holds log forget gates, or with
    ``gate_logit_normalizer`` ``n > 0`` gate logits (log gates ``logsigmoid(g) / n``). Keyword
    arguments override ``triton_chunk.CONFIG`` (tuning: ``chunk`` is the block size here);
    backward must get the same ones."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot, intra=intra)
    nb = triton.cdiv(T, chunk)
    o = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    _fwd_kernel[(B * H, nb)](
        q, k, v, g, o, *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(o),
        T, H, grid_h, grid_w, int(scan_col), int(reverse), nb, float(scale), _inv_norm(gate_logit_normalizer),
        LOGITS=bool(gate_logit_normalizer), **main, **meta, **launch)
    s1, s2 = state_shapes(B, T, H, dk, dv)
    return o, q.new_empty(s1, dtype=torch.float32), q.new_empty(s2, dtype=torch.float32)


def gla_bwd(q, k, v, g, do, saved1, saved2, scale: float, scan_col: bool, reverse: bool, grid_h: int,
            grid_w: int, gate_logit_normalizer: float = 0.0, chunk: int | None = None,
            num_warps: int | None = None, num_stages: int | None = None, dot: str | None = None,
            intra: str | None = None):
    """Backward: ``(dq, dk, dv, dg)``, contiguous, in the dtypes of ``q, k, v, g`` (``dg``: on the
    logits when ``gate_logit_normalizer`` is set). ``saved1``, ``saved2`` are unused (empty)."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    chunk, meta, launch, main = _settings(q, v, chunk, num_warps, num_stages, dot, intra=intra)
    nb = triton.cdiv(T, chunk)
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq = torch.empty(B, T, H, dk, dtype=q.dtype, device=q.device)
    dk_ = torch.empty(B, T, H, dk, dtype=k.dtype, device=q.device)
    dv_ = torch.empty(B, T, H, dv, dtype=v.dtype, device=q.device)
    dg = torch.empty(B, T, H, dk, dtype=torch.float32, device=q.device)
    _bwd_kernel[(B * H, nb)](
        q, k, v, g, do, dq, dk_, dv_, dg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(g), *_strides(do),
        T, H, grid_h, grid_w, int(scan_col), int(reverse), nb, float(scale), _inv_norm(gate_logit_normalizer),
        LOGITS=bool(gate_logit_normalizer), **main, **meta, **launch)
    return dq, dk_, dv_, dg.to(g.dtype)
