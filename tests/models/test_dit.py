"""The DiT block against DiT's published block written out here: adaLN chunk order (shift, scale,
gate for attention, then for the MLP), timm's qkv layout ``[3, heads, head_dim]``, explicit softmax
attention, GELU(tanh) MLP. These layouts decide whether the authors' checkpoints load correctly."""
import torch
import torch.nn.functional as F

from gladiff import create_model


def dit_block_reference(blk, x, c, heads):
    B, T, D = x.shape
    hd = D // heads
    shift1, scale1, gate1, shift2, scale2, gate2 = blk.adaLN_modulation[1](F.silu(c)).chunk(6, dim=1)

    def ln(z):
        return (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)

    h = ln(x) * (1 + scale1[:, None]) + shift1[:, None]
    qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias  # [B, T, 3 D], laid out (3, heads, head_dim)
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, T, heads, hd).transpose(1, 2) for i in range(3))
    attn = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1) @ v  # [B, heads, T, hd]
    x = x + gate1[:, None] * blk.attn.proj(attn.transpose(1, 2).reshape(B, T, D))
    h = ln(x) * (1 + scale2[:, None]) + shift2[:, None]
    mlp = blk.mlp.fc2(F.gelu(blk.mlp.fc1(h), approximate="tanh"))
    assert blk.mlp.fc1.out_features == 4 * D
    return x + gate2[:, None] * mlp


def test_dit_block_matches_the_published_block():
    torch.manual_seed(0)
    m = create_model("DiT-S/2", input_size=8, in_channels=2, num_classes=5, depth=2, hidden_size=48, num_heads=3)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
        x, c = torch.randn(2, 16, 48), torch.randn(2, 48)
        for blk in m.blocks:
            torch.testing.assert_close(blk(x, c), dit_block_reference(blk, x, c, 3), rtol=1e-4, atol=1e-5)
