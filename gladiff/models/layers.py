"""Pieces shared by DiG and DiT: embedders, adaLN modulation, the final layer, 2-D sin-cos positions."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def modulate(x, shift, scale):
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``shift, scale: [B, D]`` over ``x: [B, T, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def recomputed(fn, *args, enabled: bool = True):
    """``fn(*args)`` whose intermediates are not kept for backward but recomputed there.

    For cheap element-wise regions whose inputs are saved anyway (by the neighbouring matmuls or
    kernels): under ``torch.compile`` the region's values are tagged "recompute", so the
    partitioner keeps only its inputs instead of its float32 intermediates and output; eager
    autograd drops the intermediates (non-reentrant ``torch.utils.checkpoint``). The forward
    values and gradients are exactly those of ``fn(*args)``. Off without gradients or when
    ``enabled`` is False.
    """
    if not enabled or not torch.is_grad_enabled():
        return fn(*args)
    # No randomness inside these regions: skipping the RNG-state save keeps the step free of
    # host work (and CUDA-graph capturable).
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


# ----------------------------------------------------------------------------- embedders
class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: 256-d sinusoid ([cos, sin], max period 10000) -> MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim: int, max_period: float = 10000.0):
        """``t: [B]`` (may be fractional) -> ``[B, dim]`` sinusoidal embedding."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                               device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t):
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; with ``dropout_prob > 0`` an extra row is the null class used for
    classifier-free guidance, and labels are dropped to it with that probability while training."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels):
        drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels):
        if self.training and self.dropout_prob > 0:
            labels = self.token_drop(labels)
        return self.embedding_table(labels)


# ----------------------------------------------------------------------------- output
class FinalLayer(nn.Module):
    """LayerNorm (no affine) -> adaLN shift/scale -> linear to ``p * p * C_out`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------- positions
def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@functools.lru_cache(maxsize=32)
def sincos_pos_embed_2d(embed_dim: int, grid: tuple[int, int]) -> np.ndarray:
    """MAE/DiT fixed 2-D sin-cos position embedding for an ``(h, w)`` token grid: ``[h*w, embed_dim]``.

    The first half of the channels encodes the column (x), the second half the row (y), as MAE does.
    """
    h, w = grid
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    emb = np.concatenate([_sincos_1d(embed_dim // 2, gx), _sincos_1d(embed_dim // 2, gy)], axis=1)
    emb.setflags(write=False)
    return emb


def as_pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"input_size must be an int or an (h, w) pair, got {size}")
    return size
