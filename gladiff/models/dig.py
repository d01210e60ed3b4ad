"""DiG: the DiT skeleton with Gated Linear Attention, SwiGLU and the Spatial Reorientation &
Enhancement Module (SREM). The network, exactly: ``docs/architecture.md``.

SREM is a property of each block, not a tensor copy: tokens stay in raster order, block ``i`` scans
in its own direction (the GLA operator owns the scan order) and runs its depth-wise conv in the
block's frame (the 3x3 kernel flipped / transposed to match). This computes the same function, from
the same ``state_dict``, as the authors' code, which physically reverses the sequence after every
block and also transposes the grid after every odd block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import dwconv3x3, gla
from ..ops.dwconv import BACKENDS as DWCONV_BACKENDS
from .backbone import DiffusionTransformer
from .layers import modulate, recomputed

SCAN_SCHEDULES = ("srem", "flip", "causal")
DWCONV_INITS = ("identity", "random")


# ----------------------------------------------------------------------------- SREM
@dataclass(frozen=True)
class Orientation:
    """Where block ``i`` sees the tokens: its scan order and the frame its conv runs in.

    ``transpose``/``rot180`` describe the grid as the authors' code holds it physically at that
    block: transposed (h <-> w) and/or reversed (a 180-degree rotation).
    """

    scan: str  # "row" or "col"
    reverse: bool
    transpose: bool
    rot180: bool


def block_orientation(i: int, schedule: str = "srem") -> Orientation:
    """Orientation of block ``i`` (0-based) under a scan schedule.

    * ``"srem"`` (the paper's final design): period 4 - row forward, row reversed, column forward,
      column reversed (reverse after every block, transpose after every odd one).
    * ``"flip"``: reverse after every block (row forward / row reversed).
    * ``"causal"``: one direction throughout (row forward).
    """
    if schedule == "srem":
        phase = i % 4
        return Orientation("col" if phase >= 2 else "row", phase % 2 == 1, phase >= 2, phase % 2 == 1)
    if schedule == "flip":
        return Orientation("row", i % 2 == 1, False, i % 2 == 1)
    if schedule == "causal":
        return Orientation("row", False, False, False)
    raise ValueError(f"unknown scan_schedule {schedule!r}; choose from {SCAN_SCHEDULES}")


# ----------------------------------------------------------------------------- token mixer
class GatedLinearAttention(nn.Module):
    """GLA token mixer: q/k (D -> D/2), v/g (D -> D), low-rank log forget gate, per-head RMSNorm of
    the output times ``swish(g)``, then ``Wo``. Per head ``dk = D / 2H``, ``dv = D / H``."""

    def __init__(self, hidden_size: int, num_heads: int, expand_k: float = 0.5, expand_v: float = 1.0,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0, norm_eps: float = 1e-6,
                 backend: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = int(hidden_size * expand_k)
        self.value_dim = int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(f"key dim {self.key_dim} and value dim {self.value_dim} must be divisible "
                             f"by num_heads {num_heads}")
        self.head_k_dim = self.key_dim // num_heads
        self.head_v_dim = self.value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.norm_eps = norm_eps
        self.backend = backend
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, self.key_dim, bias=True))
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.g_norm_weight = nn.Parameter(torch.ones(self.head_v_dim))
        # Option: one GEMM for the q, k, v, g projections and the gate's low-rank down-projection
        # (all read the same x); the parameters (and the state_dict) stay the published ones. Off
        # by default: on an H200 (DiG-XL/2 256 px, batch 32, compile+graph) it was 1% faster but
        # raised peak memory from 18.9 to 23.3 GB (benchmarks/results/dig_options_H200_*.json).
        self.fuse_projections = False
        # Recompute the element-wise gate and norm regions in backward (their inputs are saved
        # anyway): less activation memory for the same values and gradients.
        self.recompute_elementwise = True

    def reset_parameters(self) -> None:
        """The GLA recipe: xavier-uniform with gain 2**-2.5 on every linear, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=2 ** -2.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.ones_(self.g_norm_weight)

    def project(self, x):
        """``x: [B, T, D]`` -> ``q, k [B, T, D/2]``, ``v, g [B, T, D]``, gate logits ``[B, T, D/2]``
        (before logsigmoid); with ``fuse_projections`` views into one GEMM's output."""
        if not self.fuse_projections:
            return (self.q_proj(x), self.k_proj(x), self.v_proj(x), self.g_proj(x), self.gk_proj(x))
        down = self.gk_proj[0]
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.g_proj.weight,
                       down.weight])
        q, k, v, g, low = F.linear(x, w).split(
            [self.key_dim, self.key_dim, self.value_dim, self.value_dim, down.out_features], dim=-1)
        return q, k, v, g, self.gk_proj[1](low)

    def forward(self, x, grid, scan: str = "row", reverse: bool = False):
        """``x: [B, T, D]`` in raster order -> ``[B, T, D]``; the recurrence runs along ``scan``."""
        B, T, _ = x.shape
        H = self.num_heads
        q, k, v, g, gk = self.project(x)
        gk = recomputed(self.log_forget_gate, gk, enabled=self.recompute_elementwise)
        o = gla(q.view(B, T, H, self.head_k_dim), k.view(B, T, H, self.head_k_dim),
                v.view(B, T, H, self.head_v_dim), gk.view(B, T, H, self.head_k_dim),
                scan=scan, reverse=reverse, grid=grid, backend=self.backend,
                check_gates=False)  # logsigmoid gates are <= 0: no value check (a GPU sync) per call
        o = recomputed(self.gated_norm, o, g.view(B, T, H, self.head_v_dim), enabled=self.recompute_elementwise)
        return self.o_proj(o.reshape(B, T, self.value_dim))

    def log_forget_gate(self, logits):
        """Gate logits -> log forget gates ``logsigmoid(logits) / normalizer`` (float32, <= 0)."""
        return F.logsigmoid(logits.float()) / self.gate_logit_normalizer

    def gated_norm(self, o, g):
        """Per-head RMSNorm of the GLA output times ``swish(g)``, in float32, back in ``g``'s dtype."""
        o = o.float()
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.g_norm_weight.float()
        return (o * F.silu(g.float())).to(g.dtype)


class SwiGLU(nn.Module):
    """``Linear(D, 2I)`` -> ``silu(gate) * y`` -> ``Linear(I, D)``, no biases;
    ``I = 256 * ceil(int(8D/3) / 256)``."""

    def __init__(self, hidden_size: int, intermediate_size: int | None = None):
        super().__init__()
        if intermediate_size is None:
            intermediate_size = 256 * math.ceil(int(hidden_size * 8 / 3) / 256)
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

        # Recompute silu(gate) * y in backward from gate_proj's output (saved anyway) rather than
        # keeping it: saves 8D/3 values per token for one element-wise pass.
        self.recompute_elementwise = True

    def forward(self, x):
        return self.down_proj(recomputed(self.activation, self.gate_proj(x), enabled=self.recompute_elementwise))

    @staticmethod
    def activation(gate_y):
        gate, y = gate_y.chunk(2, dim=-1)
        return F.silu(gate) * y


# ----------------------------------------------------------------------------- block
class DiGBlock(nn.Module):
    """adaLN-Zero block: GLA along the block's scan order, SwiGLU, then the 3x3 depth-wise conv
    (SREM's enhancement) in the block's frame."""

    def __init__(self, hidden_size: int, num_heads: int, orientation: Orientation, dwconv: bool = True,
                 gla_backend: str = "auto", intermediate_size: int | None = None, dwconv_backend: str = "auto"):
        super().__init__()
        self.orientation = orientation
        self.dwconv_backend = dwconv_backend
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GatedLinearAttention(hidden_size, num_heads, backend=gla_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.dwconv = (nn.Conv2d(hidden_size, hidden_size, 3, padding=1, groups=hidden_size, bias=True)
                       if dwconv else None)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def conv_weight(self):
        """The conv kernel as seen from raster order: the stored kernel acts on the block's frame."""
        w = self.dwconv.weight
        if self.orientation.transpose:
            w = w.transpose(-1, -2)
        if self.orientation.rot180:
            w = w.flip(-1, -2)
        return w

    def forward(self, x, c, grid):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        o = self.orientation
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), grid,
                                               scan=o.scan, reverse=o.reverse)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        if self.dwconv is not None:
            # The tokens are the image in channels-last layout: the op convolves them in place.
            x = dwconv3x3(x, self.conv_weight(), self.dwconv.bias, grid, backend=self.dwconv_backend)
        return x


# ----------------------------------------------------------------------------- network
class DiG(DiffusionTransformer):
    """Diffusion GLA transformer.

    Extra options (the paper's ablation): ``scan_schedule`` in ``SCAN_SCHEDULES`` (default
    ``"srem"``, the four-direction cycle), ``dwconv`` (default True) and ``dwconv_init`` in
    ``DWCONV_INITS`` (default ``"identity"``); ``gla_backend`` picks the GLA operator's backend and
    ``dwconv_backend`` the depth-wise conv's (``gladiff.ops.dwconv.BACKENDS``); ``intermediate_size``
    overrides the SwiGLU width.
    """

    family = "DiG"

    def __init__(self, *args, scan_schedule: str = "srem", dwconv: bool = True, dwconv_init: str = "identity",
                 gla_backend: str = "auto", intermediate_size: int | None = None, dwconv_backend: str = "auto",
                 **kwargs):
        if scan_schedule not in SCAN_SCHEDULES:
            raise ValueError(f"unknown scan_schedule {scan_schedule!r}; choose from {SCAN_SCHEDULES}")
        if dwconv_init not in DWCONV_INITS:
            raise ValueError(f"unknown dwconv_init {dwconv_init!r}; choose from {DWCONV_INITS}")
        if dwconv_backend not in DWCONV_BACKENDS:
            raise ValueError(f"unknown dwconv_backend {dwconv_backend!r}; choose from {DWCONV_BACKENDS}")
        if intermediate_size is not None and (isinstance(intermediate_size, bool)
                                              or not isinstance(intermediate_size, int) or intermediate_size < 1):
            raise ValueError(f"intermediate_size must be a positive integer or None, got {intermediate_size!r}")
        hidden, heads = kwargs.get("hidden_size", 1152), kwargs.get("num_heads", 16)
        if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % (2 * heads):
            raise ValueError(f"DiG needs hidden_size divisible by 2 * num_heads (key dim D/2 split over "
                             f"heads); got hidden_size={hidden}, num_heads={heads}")
        self.scan_schedule = scan_schedule
        self.use_dwconv = dwconv
        self.dwconv_init = dwconv_init
        self.gla_backend = gla_backend
        self.dwconv_backend = dwconv_backend
        self.intermediate_size = intermediate_size
        super().__init__(*args, **kwargs)

    def config(self) -> dict:
        """The skeleton's options plus DiG's (the SwiGLU width as built)."""
        width = self.blocks[0].mlp.intermediate_size if len(self.blocks) else self.intermediate_size
        return {**super().config(), "scan_schedule": self.scan_schedule, "dwconv": bool(self.use_dwconv),
                "dwconv_init": self.dwconv_init, "intermediate_size": width}

    def build_blocks(self):
        return [DiGBlock(self.hidden_size, self.num_heads, block_orientation(i, self.scan_schedule),
                         dwconv=self.use_dwconv, gla_backend=self.gla_backend,
                         intermediate_size=self.intermediate_size, dwconv_backend=self.dwconv_backend)
                for i in range(self.depth)]

    def initialize_family_weights(self):
        for block in self.blocks:
            block.attn.reset_parameters()
            if block.dwconv is None:
                continue
            if self.dwconv_init == "identity":
                nn.init.zeros_(block.dwconv.weight)
                nn.init.zeros_(block.dwconv.bias)
                with torch.no_grad():
                    block.dwconv.weight[:, :, 1, 1] = 1.0
            else:
                block.dwconv.reset_parameters()

    def set_gla_backend(self, backend: str) -> None:
        """Switch every block's GLA operator backend (e.g. ``"recurrent"`` for checks)."""
        self.gla_backend = backend
        for block in self.blocks:
            block.attn.backend = backend

    def set_dwconv_backend(self, backend: str) -> None:
        """Switch every block's depth-wise conv backend (e.g. ``"torch"`` for checks)."""
        self.dwconv_backend = backend
        for block in self.blocks:
            block.dwconv_backend = backend
