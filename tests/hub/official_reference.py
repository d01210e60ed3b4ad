"""The authors' DiT and DiG networks restated as plain functions of *their* state dicts: the
independent references the conversion tests compare gladiff's converted models with.

Written from the official code (facebookresearch/DiT ``models.py`` with timm's ``PatchEmbed``,
``Attention`` and ``Mlp``; hustvl/DiG ``models_dig.py`` and ``module_dig.py`` with fla's
``chunk_gla`` and ``FusedRMSNormSwishGate``), not from gladiff: the GLA recurrence is a loop over
tokens, attention is an explicit softmax, DiG's SREM is the physical flip of the token sequence
after every block and the transpose of the grid after every odd block, its conv runs on that
physical grid. Nothing here imports gladiff.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- state dicts
def dit_state_shapes(hidden, depth, patch, channels, classes, tokens, learn_sigma=True, mlp_ratio=4.0):
    """Every name and shape of the official DiT's ``state_dict()`` (class dropout 0.1)."""
    d, out = hidden, channels * (2 if learn_sigma else 1)
    mlp = int(hidden * mlp_ratio)
    shapes = _outer_shapes(d, patch, channels, classes, tokens, out)
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "mlp.fc1.weight": (mlp, d), b + "mlp.fc1.bias": (mlp,),
                       b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,),
                       b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,)})
    return shapes


def dig_state_shapes(hidden, depth, heads, patch, channels, classes, tokens, learn_sigma=True):
    """Every name and shape of the official DiG's ``state_dict()`` (``if_dw_conv=True``, fused
    RMSNorm-swish gate, expand_k 0.5, expand_v 1, gate rank 16, GLAMLP hidden ratio 4)."""
    d, out = hidden, channels * (2 if learn_sigma else 1)
    inter = 256 * ((int(d * 4 * 2 / 3) + 255) // 256)
    shapes = _outer_shapes(d, patch, channels, classes, tokens, out)
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "attn.q_proj.weight": (d // 2, d), b + "attn.k_proj.weight": (d // 2, d),
                       b + "attn.v_proj.weight": (d, d), b + "attn.g_proj.weight": (d, d),
                       b + "attn.gk_proj.0.weight": (16, d), b + "attn.gk_proj.1.weight": (d // 2, 16),
                       b + "attn.gk_proj.1.bias": (d // 2,), b + "attn.o_proj.weight": (d, d),
                       b + "attn.g_norm_swish_gate.weight": (d // heads,),
                       b + "mlp.gate_proj.weight": (2 * inter, d), b + "mlp.down_proj.weight": (d, inter),
                       b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
                       b + "dw_conv.weight": (d, 1, 3, 3), b + "dw_conv.bias": (d,)})
    return shapes


def _outer_shapes(d, patch, channels, classes, tokens, out):
    return {"pos_embed": (1, tokens, d), "x_embedder.proj.weight": (d, channels, patch, patch),
            "x_embedder.proj.bias": (d,), "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
            "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
            "y_embedder.embedding_table.weight": (classes + 1, d),
            "final_layer.linear.weight": (patch * patch * out, d), "final_layer.linear.bias": (patch * patch * out,),
            "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,)}


def random_state(shapes: dict, seed: int, scale: float = 0.2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in shapes.items()}


# ----------------------------------------------------------------------------- shared pieces
def _embed(sd, x, t, y, patch):
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    tok = tok.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(sd["t_embedder.mlp.0.weight"].dtype)
    temb = F.linear(F.silu(F.linear(emb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    return tok, temb + sd["y_embedder.embedding_table.weight"][y]


def _modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _final(sd, tok, c, patch, grid):
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)
    out = F.linear(_modulate(_ln(tok), shift, scale), sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    b, c_out = out.shape[0], out.shape[-1] // (patch * patch)
    out = out.reshape(b, grid, grid, patch, patch, c_out)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, c_out, grid * patch, grid * patch)


# ----------------------------------------------------------------------------- DiT
def dit_forward(sd, x, t, y, *, heads, patch):
    """The official ``DiT.forward`` (eval mode) from its state dict."""
    tok, c = _embed(sd, x, t, y, patch)
    b, n, d = tok.shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        s1, c1, g1, s2, c2, g2 = F.linear(F.silu(c), p("adaLN_modulation.1.weight"),
                                          p("adaLN_modulation.1.bias")).chunk(6, dim=1)
        h = _modulate(_ln(tok), s1, c1)
        qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, d)
        tok = tok + g1.unsqueeze(1) * F.linear(h, p("attn.proj.weight"), p("attn.proj.bias"))
        h = F.linear(_modulate(_ln(tok), s2, c2), p("mlp.fc1.weight"), p("mlp.fc1.bias"))
        h = F.linear(F.gelu(h, approximate="tanh"), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        tok = tok + g2.unsqueeze(1) * h
    return _final(sd, tok, c, patch, round(n ** 0.5))


def forward_with_cfg(forward, x, t, y, cfg_scale):
    """The official ``forward_with_cfg``: the batch is [cond half; null half] with the same x in
    both; guidance extrapolates only the first three output channels."""
    half = x[: len(x) // 2]
    out = forward(torch.cat([half, half]), t, y)
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)


# ----------------------------------------------------------------------------- DiG
def _gla(q, k, v, gk):
    """fla's chunk_gla, step by step: ``[B, H, L, d]`` inputs, scale dk^-0.5, zero initial state."""
    b, h, length, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = []
    for i in range(length):
        state = gk[:, :, i, :, None].exp() * state + k[:, :, i, :, None] * v[:, :, i, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i] * dk ** -0.5, state))
    return torch.stack(out, dim=2)


def _gla_attention(sd, prefix, x, heads):
    """module_dig.GatedLinearAttention.forward (fused norm + swish gate), no cache, no mask."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    b, length, _ = x.shape
    split = lambda t: t.reshape(b, length, heads, -1).transpose(1, 2)  # 'b l (h d) -> b h l d'  # noqa: E731
    q, k, v = (split(F.linear(x, p(f"{n}_proj.weight"))) for n in ("q", "k", "v"))
    gk = F.linear(F.linear(x, p("gk_proj.0.weight")), p("gk_proj.1.weight"), p("gk_proj.1.bias"))
    gk = F.logsigmoid(split(gk)) / 16
    o = _gla(q, k, v, gk).transpose(1, 2)  # 'b h l d -> b l h d'
    g = F.linear(x, p("g_proj.weight")).reshape(b, length, heads, -1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * p("g_norm_swish_gate.weight")
    o = (o * g * torch.sigmoid(g)).reshape(b, length, -1)
    return F.linear(o, p("o_proj.weight"))


def dig_forward(sd, x, t, y, *, heads, patch, quad_dir=True):
    """The official ``DiG.forward`` (``bid_mode='layer'``, ``if_dw_conv=True``, ``if_quad_dir``)."""
    tok, c = _embed(sd, x, t, y, patch)
    b, n, d = tok.shape
    edge = round(n ** 0.5)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}."
        s1, c1, g1, s2, c2, g2 = F.linear(F.silu(c), sd[pre + "adaLN_modulation.1.weight"],
                                          sd[pre + "adaLN_modulation.1.bias"]).chunk(6, dim=1)
        tok = tok + g1.unsqueeze(1) * _gla_attention(sd, pre + "attn.", _modulate(_ln(tok), s1, c1), heads)
        gate, val = F.linear(_modulate(_ln(tok), s2, c2), sd[pre + "mlp.gate_proj.weight"]).chunk(2, -1)
        tok = tok + g2.unsqueeze(1) * F.linear(F.silu(gate) * val, sd[pre + "mlp.down_proj.weight"])
        img = tok.transpose(1, 2).reshape(-1, d, edge, edge)
        tok = F.conv2d(img, sd[pre + "dw_conv.weight"], sd[pre + "dw_conv.bias"], padding=1, groups=d)
        tok = tok.flatten(2).transpose(1, 2)
        tok = tok.flip(1)
        if i % 2 == 1 and quad_dir:
            tok = tok.reshape(b, edge, edge, d).transpose(1, 2).flatten(1, 2)
    return _final(sd, tok, c, patch, edge)
