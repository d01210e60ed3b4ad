"""Compute per forward pass, counted in MACs (one multiply-add = 1), split as docs/architecture.md
("Counting compute") reads it.

* ``linear_conv``: every ``nn.Linear`` and ``nn.Conv2d`` the forward runs (patch embedding, embedders,
  adaLN, projections, MLP/SwiGLU, depth-wise conv, final layer), measured by hooks on a shape-only
  (meta-device) forward.
* ``mixer``: the token mixer's own products. Attention: ``2 * T^2 * D`` per block (``QK^T`` and
  ``AV``). GLA: its chunked form with chunk ``C = 64``, per head ``T * (C * (dk + dv) + 2 * dk * dv)``
  (the intra-chunk ``C x C`` scores and their product with values, plus reading and updating the
  ``dk x dv`` state); elementwise work (norms, gates, activations) is not counted.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .dig import GatedLinearAttention
from .dit import Attention
from .zoo import create_model

GLA_CHUNK = 64


def gla_macs(batch: int, tokens: int, heads: int, dk: int, dv: int, chunk: int = GLA_CHUNK) -> int:
    return batch * heads * tokens * (chunk * (dk + dv) + 2 * dk * dv)


def attention_macs(batch: int, tokens: int, dim: int) -> int:
    return batch * 2 * tokens * tokens * dim


@torch.no_grad()
def count_macs(model: nn.Module, input_size, batch: int = 1) -> dict[str, int]:
    """MACs of one forward pass of ``model`` on ``[batch, C, *input_size]``.

    ``model`` may live on the meta device (recommended for large models: nothing is computed).
    Returns ``{"linear_conv", "mixer", "total"}``.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    device = next(model.parameters()).device
    counts = {"linear_conv": 0, "mixer": 0}

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            counts["linear_conv"] += output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counts["linear_conv"] += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, GatedLinearAttention):
            B, T, _ = output.shape
            counts["mixer"] += gla_macs(B, T, module.num_heads, module.head_k_dim, module.head_v_dim)
        elif isinstance(module, Attention):
            B, T, D = output.shape
            counts["mixer"] += attention_macs(B, T, D)

    # The conv op inside DiG blocks (the conv in the block's frame) bypasses the module hook: count it here.
    def dwconv_hook(module, inputs, output):
        if getattr(module, "dwconv", None) is not None:
            B, T, D = output.shape
            counts["linear_conv"] += B * T * D * 9

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, GatedLinearAttention, Attention)) or (
                isinstance(m, nn.Conv2d) and m is getattr(model, "x_embedder", None)):
            handles.append(m.register_forward_hook(hook))
        if hasattr(m, "dwconv"):
            handles.append(m.register_forward_hook(dwconv_hook))
    # The one-GEMM input projection calls F.linear past the q/k/v/g/gate module hooks; count the
    # same products through the separate modules (identical MACs).
    fused = [m for m in model.modules() if isinstance(m, GatedLinearAttention) and m.fuse_projections]
    for m in fused:
        m.fuse_projections = False
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(batch, model.in_channels, h, w, device=device)
        t = torch.zeros(batch, device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        model(x, t, y)
    finally:
        for hd in handles:
            hd.remove()
        for m in fused:
            m.fuse_projections = True
        model.train(was_training)
    counts["total"] = counts["linear_conv"] + counts["mixer"]
    return counts


def model_summary(name: str, image_size: int = 256, in_channels: int = 4, num_classes: int = 1000,
                  latent_factor: int = 8, **overrides) -> dict:
    """Parameters and forward GMACs per image of a zoo model at ``image_size`` pixels
    (latent side ``image_size / latent_factor``), built on the meta device."""
    size = image_size // latent_factor
    with torch.device("meta"):
        model = create_model(name, input_size=size, in_channels=in_channels, num_classes=num_classes,
                             **overrides)
    macs = count_macs(model, size)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"name": name, "params": params, "trainable": trainable,
            "gmacs_linear_conv": macs["linear_conv"] / 1e9, "gmacs_mixer": macs["mixer"] / 1e9,
            "gmacs_total": macs["total"] / 1e9, "image_size": image_size, "latent_size": size}
