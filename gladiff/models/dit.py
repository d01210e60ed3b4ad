"""DiT: the baseline - softmax attention through ``scaled_dot_product_attention``, GELU-tanh MLP."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .backbone import DiffusionTransformer
from .layers import modulate


class Attention(nn.Module):
    """Multi-head self-attention with a qkv bias, on PyTorch's fused SDPA kernels."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    """``Linear(D, rD)`` -> GELU(tanh) -> ``Linear(rD, D)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c, grid=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(DiffusionTransformer):
    """Diffusion transformer with softmax attention (Peebles & Xie). Extra option: ``mlp_ratio``."""

    family = "DiT"

    def __init__(self, *args, mlp_ratio: float = 4.0, **kwargs):
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        self.mlp_ratio = mlp_ratio
        super().__init__(*args, **kwargs)

    def config(self) -> dict:
        """The skeleton's options plus DiT's."""
        return {**super().config(), "mlp_ratio": self.mlp_ratio}

    def build_blocks(self):
        return [DiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio) for _ in range(self.depth)]
