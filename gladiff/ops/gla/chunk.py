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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .order import is_identity, scan_order


def _intra_chunk(q, k, b, c: int):
    """Causal decayed scores inside each chunk.

    ``q, k, b: [..., C, dk]`` (b the inclusive cumulative log-gate within the chunk) ->
    ``A: [..., C, C]`` with ``A[t, s] = sum_d q[t,d] k[s,d] exp(b[t,d] - b[s,d])`` for s <= t, else 0.
    """
    *lead, C, dk = q.shape
    n = C // c
    qs, ks, bs = (x.reshape(*lead, n, c, dk) for x in (q, k, b))
    # Diagonal sub-blocks: exact per-channel decay, masked before exp (upper triangle -> -inf).
    diff = bs.unsqueeze(-2) - bs.unsqueeze(-3)  # [..., n, t, s, dk]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = diff.masked_fill(~causal[:, :, None], float("-inf"))
    a_diag = torch.einsum("...itd,...isd,...itsd->...its", qs, ks, diff.exp())
    if n == 1:
        return a_diag.reshape(*lead, C, C)
    # Off-diagonal sub-blocks (j < i): split the decay at r_i, the last token before sub-chunk i.
    b_ref = torch.cat([torch.zeros_like(bs[..., :1, 0, :]), bs[..., :-1, -1, :]], dim=-2)
    q_t = qs * (bs - b_ref.unsqueeze(-2)).exp()  # exponent <= 0
    ex = b_ref[..., :, None, None, :] - bs[..., None, :, :, :]  # [..., i, j, s, dk]
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

    Computes in float32 (float64 for float64 inputs) and returns the input dtype.
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
    b = g.cumsum(-2)
    o = _intra_chunk(q, k, b, c) @ v
    N = q.shape[2]
    if N > 1:
        b_last = b[..., -1:, :]
        q_in = q * b.exp()
        k_in = k * (b_last - b).exp()
        updates = k_in.transpose(-1, -2) @ v  # [B, H, N, dk, dv]
        decay = b_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, dk, 1]
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
