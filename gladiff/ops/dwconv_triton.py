"""Triton kernels for the depth-wise 3x3 conv on tokens, as PyTorch custom ops
(``torch.ops.gladiff.dwconv3x3_fwd`` / ``dwconv3x3_bwd``).

Tokens ``[B, T, D]`` are the image in channels-last layout, so the kernels read them in place: a
program owns a tile of ``BT`` tokens (raster order) by ``BD`` channels (contiguous, coalesced), and
a 3x3 tap is the same tile shifted by ``di * w + dj`` tokens, masked where the neighbour falls off
the grid (zero padding). Everything accumulates in float32.

* **Forward** (1 launch): per tile, 9 shifted masked loads times the tap weights, plus the bias,
  one write in ``x``'s dtype.
* **Backward** (2 launches). The input gradient is the same conv of ``dy`` with the kernel rotated
  by 180 degrees (``dx[t] = sum_k W[k] dy[t - offset_k]``), the forward tile code with the taps
  read in reverse. The weight and bias gradients ``dW[c, k] = sum_t dy[t, c] x[t + offset_k, c]``,
  ``db[c] = sum_t dy[t, c]`` are reduced in two deterministic stages: the first kernel (fused with
  ``dx``: it holds ``dy`` anyway) walks a split of the tokens of one image, accumulating whole
  tiles (multiply-adds only; the sums across threads run once, after the loop), and writes its 10
  partial sums per channel to a float32 ``[P, 10, D]`` buffer; the second sums the ``P`` rows in a
  fixed order and writes ``dW``/``db`` in the parameters' dtype. No atomics: bitwise reproducible.

No host synchronisation and only PyTorch-allocated memory: CUDA-graph capturable. The fake
implementations let ``torch.compile(fullgraph=True)`` trace through. Importing this module imports
Triton; ``gladiff.ops.dwconv`` imports it only when the ``"triton"`` backend runs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton import fix_interpreter_index

# Kernel names avoid GLA's ``_fwd_kernel`` / ``_bwd_kernel`` and contain "conv", so that profiles
# (benchmarks/profile_step.py groups kernels by name) count them as the conv.

# Tiles (tokens x channels) and warps per program of the forward and of the backward kernel, and
# ``reduce_p`` rows per step of the final weight-gradient sum; ``bwd_fused``: dx in the backward
# kernel (else a launch of the forward kernel of its own). Chosen by register count (ptxas for
# sm_90a, benchmarks/dwconv_registers.py): the forward's 16 x 64 bf16 tile over 4 warps is one
# 16-byte vector per thread and tap, 79 registers; the backward holds 10 float32 accumulator tiles
# (9 taps and the bias), so it takes 8 x 64 over 8 warps, 88 registers (16 x 64 over 4 warps
# needs 255 and spills). Overridable per call (the sweep in benchmarks/check_dwconv_gpu.py).
CONFIG = dict(block_t=16, block_d=64, warps=4, bwd_block_t=8, bwd_block_d=64, bwd_warps=8, bwd_fused=True,
              reduce_p=32)
# Backward: split each image's tokens until at least this many programs run (132 SMs on H100/H200),
# so small batches of long sequences still fill the GPU.
TARGET_PROGRAMS = 1024
_DEVICES = ("cuda", "cpu")  # cpu: only under TRITON_INTERPRET=1 (tests)


@triton.jit
def _load_tap(src, base, stride_t, row, col, mask_t, offs_d, mask_d, H, W, DI: tl.constexpr, DJ: tl.constexpr):
    """float32 tile of ``src`` at the tokens ``(row + DI, col + DJ)`` (zeros off the grid)."""
    r = row + DI
    c = col + DJ
    ok = mask_t & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    ptrs = src + base + (r * W + c)[:, None] * stride_t + offs_d[None, :]
    return tl.load(ptrs, mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_tile(src, base, stride_t, w9, offs_t, mask_t, offs_d, mask_d, H, W,
               FLIP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """The 3x3 depth-wise conv of ``src`` at a tile of tokens x channels, float32 ``[BT, BD]``;
    ``FLIP`` uses the kernel rotated by 180 degrees (the input gradient)."""
    row = offs_t // W
    col = offs_t % W
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for k in tl.static_range(9):
        if FLIP:
            wk = tl.load(w9 + offs_d * 9 + (8 - k), mask=mask_d, other=0.0).to(tl.float32)
        else:
            wk = tl.load(w9 + offs_d * 9 + k, mask=mask_d, other=0.0).to(tl.float32)
        tap = _load_tap(src, base, stride_t, row, col, mask_t, offs_d, mask_d, H, W, k // 3 - 1, k % 3 - 1)
        acc += tap * wk[None, :]
    return acc


@triton.jit
def _dwconv_forward(x, w9, bias, y, sxb, sxt, syb, syt, T, H, W, D,
                    HAS_BIAS: tl.constexpr, FLIP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Program (token tile, channel tile, image): ``y = conv(x) + bias`` (``FLIP``: with the kernel
    rotated by 180 degrees, i.e. the input gradient when ``x`` is ``dy``)."""
    pid_t, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_t, mask_d = offs_t < T, offs_d < D
    acc = _conv_tile(x, pid_b.to(tl.int64) * sxb, sxt, w9, offs_t, mask_t, offs_d, mask_d, H, W, FLIP, BT, BD)
    if HAS_BIAS:
        acc += tl.load(bias + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    ptrs = y + pid_b.to(tl.int64) * syb + offs_t[:, None] * syt + offs_d[None, :]
    tl.store(ptrs, acc.to(y.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _tap_prod(g, x, base, stride_t, row, col, mask_t, offs_d, mask_d, H, W, DI: tl.constexpr, DJ: tl.constexpr):
    """``g[t] * x[t + (DI, DJ)]`` on a tile: one weight tap's gradient terms, float32 ``[BT, BD]``."""
    return g * _load_tap(x, base, stride_t, row, col, mask_t, offs_d, mask_d, H, W, DI, DJ)


@triton.jit
def _dwconv_backward(x, dy, w9, dx, part, sxb, sxt, sdb, sdt, sgb, sgt, T, H, W, D, SPLIT, NSPLIT,
                     WRITE_DX: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Program (token split, channel tile, image): ``dx`` on the split's tokens (if ``WRITE_DX``)
    and the split's partial sums of the 9 weight taps' and the bias' gradients (rows of
    ``part[P, 10, D]``)."""
    pid_s, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < D
    xb = pid_b.to(tl.int64) * sxb
    db = pid_b.to(tl.int64) * sdb
    gb = pid_b.to(tl.int64) * sgb
    # One accumulator per tap (row-major (di, dj) order of the 3x3 kernel) and one for the bias,
    # kept as whole tiles: the loop only multiplies and adds, and the sums over tokens (reductions
    # across threads and warps) run once per program, after it.
    a0 = tl.zeros([BT, BD], dtype=tl.float32)
    a1 = tl.zeros([BT, BD], dtype=tl.float32)
    a2 = tl.zeros([BT, BD], dtype=tl.float32)
    a3 = tl.zeros([BT, BD], dtype=tl.float32)
    a4 = tl.zeros([BT, BD], dtype=tl.float32)
    a5 = tl.zeros([BT, BD], dtype=tl.float32)
    a6 = tl.zeros([BT, BD], dtype=tl.float32)
    a7 = tl.zeros([BT, BD], dtype=tl.float32)
    a8 = tl.zeros([BT, BD], dtype=tl.float32)
    a9 = tl.zeros([BT, BD], dtype=tl.float32)
    start = pid_s * SPLIT
    end = tl.minimum(start + SPLIT, T)
    for t0 in range(start, end, BT):
        offs_t = t0 + tl.arange(0, BT)
        mask_t = offs_t < end
        if WRITE_DX:
            # dx: the conv of dy with the kernel rotated by 180 degrees.
            acc = _conv_tile(dy, db, sdt, w9, offs_t, mask_t, offs_d, mask_d, H, W, True, BT, BD)
            ptrs = dx + gb + offs_t[:, None] * sgt + offs_d[None, :]
            tl.store(ptrs, acc.to(dx.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])
        # dW, db: dy at the tile times x at each tap's neighbour.
        row = offs_t // W
        col = offs_t % W
        g = _load_tap(dy, db, sdt, row, col, mask_t, offs_d, mask_d, H, W, 0, 0)
        a0 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, -1, -1)
        a1 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, -1, 0)
        a2 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, -1, 1)
        a3 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 0, -1)
        a4 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 0, 0)
        a5 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 0, 1)
        a6 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 1, -1)
        a7 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 1, 0)
        a8 += _tap_prod(g, x, xb, sxt, row, col, mask_t, offs_d, mask_d, H, W, 1, 1)
        a9 += g
    prow = part + (pid_b * NSPLIT + pid_s).to(tl.int64) * (10 * D) + offs_d
    tl.store(prow + 0 * D, tl.sum(a0, axis=0), mask=mask_d)
    tl.store(prow + 1 * D, tl.sum(a1, axis=0), mask=mask_d)
    tl.store(prow + 2 * D, tl.sum(a2, axis=0), mask=mask_d)
    tl.store(prow + 3 * D, tl.sum(a3, axis=0), mask=mask_d)
    tl.store(prow + 4 * D, tl.sum(a4, axis=0), mask=mask_d)
    tl.store(prow + 5 * D, tl.sum(a5, axis=0), mask=mask_d)
    tl.store(prow + 6 * D, tl.sum(a6, axis=0), mask=mask_d)
    tl.store(prow + 7 * D, tl.sum(a7, axis=0), mask=mask_d)
    tl.store(prow + 8 * D, tl.sum(a8, axis=0), mask=mask_d)
    tl.store(prow + 9 * D, tl.sum(a9, axis=0), mask=mask_d)


@triton.jit
def _dwconv_weight_sum(part, dw9, dbias, P, D, BP: tl.constexpr, BD: tl.constexpr):
    """Program (channel tile, row k of 10): ``sum_p part[p, k, :]`` in a fixed order -> ``dw9[:, k]``
    (k < 9) or ``dbias`` (k == 9), in their dtypes."""
    pid_d, k = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < D
    acc = tl.zeros([BP, BD], dtype=tl.float32)
    for p0 in range(0, P, BP):
        offs_p = p0 + tl.arange(0, BP)
        ptrs = part + (offs_p[:, None].to(tl.int64) * 10 + k) * D + offs_d[None, :]
        acc += tl.load(ptrs, mask=(offs_p < P)[:, None] & mask_d[None, :], other=0.0)
    s = tl.sum(acc, axis=0)
    tl.store(dw9 + offs_d * 9 + k, s.to(dw9.dtype.element_ty), mask=mask_d & (k < 9))
    tl.store(dbias + offs_d, s.to(dbias.dtype.element_ty), mask=mask_d & (k == 9))


# Triton picks the interpreter when the kernels are decorated (TRITON_INTERPRET=1 at import).
_INTERPRET = type(_dwconv_forward).__name__ == "InterpretedFunction"
if _INTERPRET:
    fix_interpreter_index()


def plan_splits(B: int, T: int, D: int, block_t: int | None = None, block_d: int | None = None,
                target: int | None = None) -> tuple[int, int]:
    """Backward token split: ``(split length, a multiple of block_t; number of splits)`` so that
    ``B * channel tiles * splits`` reaches ``target`` programs where the tokens allow. Depends on
    the shapes only (the reduction order, hence the result bits, is fixed by the shapes)."""
    bt, bd = block_t or CONFIG["bwd_block_t"], block_d or CONFIG["bwd_block_d"]
    target = TARGET_PROGRAMS if target is None else target
    tiles = triton.cdiv(T, bt)
    want = max(1, min(tiles, triton.cdiv(target, B * triton.cdiv(D, bd))))
    split = triton.cdiv(tiles, want) * bt
    return split, triton.cdiv(T, split)


def _check_offsets(t):
    # Offsets inside one image are int32 in the kernels (the batch offset is int64).
    if t.shape[1] * max(t.stride(1), t.shape[2]) >= 2**31:
        raise ValueError(f"dwconv3x3 (triton): one image of {tuple(t.shape[1:])} tokens x channels with token "
                         f"stride {t.stride(1)} is too large for 32-bit offsets; use backend='torch'")


def _conv(src, w9, bias, grid_h: int, grid_w: int, flip: bool, block_t=None, block_d=None, warps=None):
    B, T, D = src.shape
    bt, bd = block_t or CONFIG["block_t"], block_d or CONFIG["block_d"]
    _check_offsets(src)
    out = torch.empty(B, T, D, dtype=src.dtype, device=src.device)
    grid = (triton.cdiv(T, bt), triton.cdiv(D, bd), B)
    # Without a bias the pointer is never read (HAS_BIAS compiles it out); any tensor stands in.
    _dwconv_forward[grid](src, w9, bias if bias is not None else out, out, src.stride(0), src.stride(1),
                          out.stride(0), out.stride(1), T, grid_h, grid_w, D, HAS_BIAS=bias is not None,
                          FLIP=flip, BT=bt, BD=bd, num_warps=warps or CONFIG["warps"])
    return out


def conv_fwd(x, w9, bias, grid_h: int, grid_w: int, block_t=None, block_d=None, warps=None):
    """``x: [B, T, D]`` (channel stride 1), ``w9: [D, 9]`` contiguous, ``bias: [D]`` or None ->
    ``y: [B, T, D]`` contiguous in x's dtype. The keyword arguments override ``CONFIG``."""
    return _conv(x, w9, bias, grid_h, grid_w, False, block_t, block_d, warps)


def conv_bwd(dy, x, w9, grid_h: int, grid_w: int, block_t=None, block_d=None, warps=None, reduce_p=None,
             target=None, fused=None):
    """Gradients for output gradient ``dy: [B, T, D]``: ``(dx [B, T, D] in x's dtype, dw9 [D, 9] and
    dbias [D] in w9's dtype)``. The keyword arguments override ``CONFIG``'s ``bwd_*`` entries;
    ``fused=False`` computes ``dx`` with the forward kernel (rotated kernel) in a launch of its own
    and leaves the backward kernel only the weight gradient (lighter, but ``dy`` is read twice)."""
    B, T, D = x.shape
    bt, bd = block_t or CONFIG["bwd_block_t"], block_d or CONFIG["bwd_block_d"]
    fused = CONFIG["bwd_fused"] if fused is None else fused
    if dy.stride(-1) != 1 or dy.stride(1) * T >= 2**31:
        dy = dy.contiguous()
    _check_offsets(x)
    _check_offsets(dy)
    split, nsplit = plan_splits(B, T, D, bt, bd, target)
    if fused:
        dx = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    else:
        dx = _conv(dy, w9, None, grid_h, grid_w, True).to(x.dtype)
    part = torch.empty(B * nsplit, 10, D, dtype=torch.float32, device=x.device)
    warps = warps or CONFIG["bwd_warps"]
    _dwconv_backward[(nsplit, triton.cdiv(D, bd), B)](
        x, dy, w9, dx, part, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
        T, grid_h, grid_w, D, split, nsplit, WRITE_DX=fused, BT=bt, BD=bd, num_warps=warps)
    dw9 = torch.empty(D, 9, dtype=w9.dtype, device=x.device)
    dbias = torch.empty(D, dtype=w9.dtype, device=x.device)
    _dwconv_weight_sum[(triton.cdiv(D, bd), 10)](part, dw9, dbias, B * nsplit, D,
                                                 BP=reduce_p or CONFIG["reduce_p"], BD=bd, num_warps=warps)
    return dx, dw9, dbias


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("gladiff::dwconv3x3_fwd", mutates_args=(), device_types=_DEVICES)
def dwconv3x3_fwd(x: torch.Tensor, w9: torch.Tensor, bias: torch.Tensor | None, grid_h: int,
                  grid_w: int) -> torch.Tensor:
    """``y = conv(x) + bias``: ``x [B, T, D]``, ``w9 [D, 9]`` -> ``y [B, T, D]``."""
    return conv_fwd(x, w9, bias, grid_h, grid_w)


@dwconv3x3_fwd.register_fake
def _fwd_fake(x, w9, bias, grid_h, grid_w):
    return x.new_empty(tuple(x.shape))


@torch.library.custom_op("gladiff::dwconv3x3_bwd", mutates_args=(), device_types=_DEVICES)
def dwconv3x3_bwd(dy: torch.Tensor, x: torch.Tensor, w9: torch.Tensor, grid_h: int,
                  grid_w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw9, dbias)`` for output gradient ``dy``."""
    return conv_bwd(dy, x, w9, grid_h, grid_w)


@dwconv3x3_bwd.register_fake
def _bwd_fake(dy, x, w9, grid_h, grid_w):
    D = x.shape[-1]
    return x.new_empty(tuple(x.shape)), w9.new_empty((D, 9)), w9.new_empty((D,))


def _setup_context(ctx, inputs, output):
    x, w9, bias, grid_h, grid_w = inputs
    ctx.save_for_backward(x, w9)
    ctx.has_bias = bias is not None
    ctx.grid = (grid_h, grid_w)


def _backward(ctx, dy):
    x, w9 = ctx.saved_tensors
    dx, dw9, dbias = dwconv3x3_bwd(dy, x, w9, *ctx.grid)
    return dx, dw9, (dbias if ctx.has_bias else None), None, None


dwconv3x3_fwd.register_autograd(_backward, setup_context=_setup_context)


def dwconv3x3_triton(x, weight, bias, grid):
    """``x [B, T, D]``, ``weight [D, 1, 3, 3]``, ``bias [D]`` or None (one dtype), ``grid (h, w)``
    -> ``y [B, T, D]``; shapes checked by ``gladiff.ops.dwconv.dwconv3x3``."""
    D = x.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    # [D, 9] taps in row-major (di, dj) order; a copy only for oriented (transposed) kernels.
    w9 = weight.reshape(D, 9).contiguous()
    bias = bias.contiguous() if bias is not None else None
    return dwconv3x3_fwd(x, w9, bias, int(grid[0]), int(grid[1]))
