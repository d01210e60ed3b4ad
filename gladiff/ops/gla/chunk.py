"""Chunked parallel form of GLA in pure PyTorch (CPU and GPU, autograd).

Tokens are split into chunks of ``C``; inside a chunk the output is an attention-like product with
decay factors, across chunks a ``dk x dv`` state is carried. Every exponent is a difference of
cumulative log-gates taken so that it is non-positive, so nothing overflows however negative the
gates are:

* inside a sub-chunk of ``c`` tokens the decay ``exp(b_t - b_s)`` (s <= t) is formed per key
  channel, masked *before* the exponential;
* between sub-chunks the decay is split at the sub-chunk boundary ``r``:
  ``exp(b_t - b_r) * exp(b_r - b_s)``, both factors <= 1, so the product becomes a matmul;
* across chunks, queries see the carried state through ``exp(b_t)`` and keys enter it through
  ``exp(b_last - b_s)``, both <= 1.

A gate of ``-inf`` ("forget everything": the recurrence multiplies the state by exactly 0) would
make such a difference ``-inf - -inf = NaN``; the cumulative sums therefore run over the finite
gates, a running count of ``-inf`` gates goes beside them, and a decay whose span holds one is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .order import is_identity, scan_order


def _decay_exponent(b_late, z_late, b_early, z_early):
    """``b_late - b_early``, the log of the decay from the early to the late token, or ``-inf`` where
    a ``-inf`` gate lies between them (``z``, the running count of ``-inf`` gates, differs; ``None``:
    there are no ``-inf`` gates)."""
    if z_late is None:
        return b_late - b_early
    return (b_late - b_early).masked_fill(z_late != z_early, float("-inf"))


def _at(z, dims):
    """``z`` with singleton dimensions inserted at ``dims`` (an int or a tuple), or None for None."""
    if z is None:
        return None
    for d in (dims,) if isinstance(dims, int) else dims:
        z = z.unsqueeze(d)
    return z


def _intra_chunk(q, k, b, z, c: int):
    """Causal decayed scores inside each chunk.

    ``q, k, b, z: [..., C, dk]`` (b the inclusive cumulative sum of the finite log-gates within the
    chunk, z the inclusive count of ``-inf`` gates or None without any) -> ``A: [..., C, C]`` with
    ``A[t, s] = sum_d q[t,d] k[s,d] exp(b[t,d] - b[s,d])`` for s <= t, else 0.
    """
    *lead, C, dk = q.shape
    n = C // c
    qs, ks, bs = (x.reshape(*lead, n, c, dk) for x in (q, k, b))
    zs = None if z is None else z.reshape(*lead, n, c, dk)
    # Diagonal sub-blocks: exact per-channel decay, masked before exp (upper triangle -> -inf).
    diff = _decay_exponent(bs.unsqueeze(-2), _at(zs, -2), bs.unsqueeze(-3), _at(zs, -3))  # [..., n, t, s, dk]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
    a_diag = torch.einsum("...itd,...isd,...itsd->...its", qs, ks, diff.exp())
    if n == 1:
        return a_diag.reshape(*lead, C, C)
    # Off-diagonal sub-blocks (j < i): split the decay at r_i, the last token before sub-chunk i.
    b_ref = torch.cat([torch.zeros_like(bs[..., :1, 0, :]), bs[..., :-1, -1, :]], dim=-2)
    z_ref = None if zs is None else torch.cat([torch.zeros_like(zs[..., :1, 0, :]), zs[..., :-1, -1, :]], dim=-2)
    q_t = qs * _decay_exponent(bs, zs, b_ref.unsqueeze(-2), _at(z_ref, -2)).exp()  # exponent <= 0
    ex = _decay_exponent(b_ref[..., :, None, None, :], _at(z_ref, (-2, -2)),
                         bs[..., None, :, :, :], _at(zs, -4))  # [..., i, j, s, dk]
    before = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)  # j < i
    ex = ex.masked_fill(~before[:, :, None, None], float("-inf"))
    k_t = ks.unsqueeze(-4) * ex.exp()  # [..., i, j, s, dk]
    a_off = torch.einsum("...itd,...ijsd->...itjs", q_t, k_t)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    a = a_off + a_diag.unsqueeze(-2) * eye[:, None, :, None]
    return a.reshape(*lead, C, C)


def gla_chunk(q, k, v, g, scale: float, scan: str = "row", reverse: bool = False, grid=None,
              chunk_size: int = 64, sub_chunk: int = 16):
    """``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` -> ``o: [B, T, H, dv]``, raster order.

    Computes in float32 (float64 for float64 inputs) and returns the input dtype. A ``-inf`` gate
    empties the state (a decay of exactly 0), as in the recurrence.
    """
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    out_dtype = q.dtype
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if not is_identity(scan, reverse):
        perm = scan_order(T, scan, reverse, grid, device=q.device)
        q, k, v, g = (x.index_select(1, perm) for x in (q, k, v, g))
    C = min(chunk_size, max(sub_chunk, -(-T // sub_chunk) * sub_chunk))
    c = min(sub_chunk, C)
    pad = -T % C
    # [B, T, H, d] -> [B, H, N, C, d]; padding at the end cannot reach earlier outputs (causal).
    def to_chunks(x):
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, -1, C, x.shape[-1])

    q, k, v, g = to_chunks(q) * scale, to_chunks(k), to_chunks(v), to_chunks(g)
    # A -inf gate would make differences of cumulative sums -inf - -inf = NaN. Sum the finite gates
    # and count the -inf ones instead: a decay across a -inf gate is exactly 0 (``_decay_exponent``).
    # Where looking costs no device sync and no graph break (CPU, eager), gates without -inf skip the
    # count (the usual case: logsigmoid gates are finite).
    reset = torch.isneginf(g)
    if g.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(reset.any()):
        b, z = g.cumsum(-2), None
    else:
        b, z = g.masked_fill(reset, 0.0).cumsum(-2), reset.to(torch.int32).cumsum(-2)
    o = _intra_chunk(q, k, b, z, c) @ v
    N = q.shape[2]
    if N > 1:
        b_last, z_last = b[..., -1:, :], None if z is None else z[..., -1:, :]
        q_in = q * _decay_exponent(b, z, 0.0, 0).exp()
        k_in = k * _decay_exponent(b_last, z_last, b, z).exp()
        updates = k_in.transpose(-1, -2) @ v  # [B, H, N, dk, dv]
        decay = _decay_exponent(b_last, z_last, 0.0, 0).squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, dk, 1]
        state = q.new_zeros(B, H, dk, dv)
        inter = [torch.zeros_like(o[:, :, 0])]
        for n in range(1, N):
            state = decay[:, :, n - 1] * state + updates[:, :, n - 1]
            inter.append(q_in[:, :, n] @ state)
        o = o + torch.stack(inter, dim=2)
    o = o.reshape(B, H, -1, dv)[:, :, :T].transpose(1, 2)
    if not is_identity(scan, reverse):
        o = torch.empty_like(o).index_copy_(1, perm, o)
    return o.to(out_dtype)
