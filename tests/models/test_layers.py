"""The shared layers against the published recipe (docs/architecture.md, DiT's models.py), each expected value
written here in closed form: the timestep sinusoid ([cos, sin], max period 10000, geometric
frequencies), the MAE/DiT 2-D sin-cos positions and their layout, the final layer. These are the
details only the authors' weights would otherwise reveal: a swap trains as well but loads wrongly."""
import math

import numpy as np
import pytest
import torch

from gladiff import create_model
from gladiff.models.layers import FinalLayer, TimestepEmbedder, sincos_pos_embed_2d

TINY = dict(in_channels=2, num_classes=5, depth=4, hidden_size=32, num_heads=2)


def timestep_sinusoid(t, dim=256, max_period=10000.0):
    """DiT's frequency embedding: ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period^(-i / (dim/2))``,
    ``i = 0 .. dim/2 - 1`` (float64)."""
    half = dim // 2
    w = np.array([max_period ** (-i / half) for i in range(half)])
    args = np.asarray(t, dtype=np.float64)[:, None] * w[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def mae_positions(dim, h, w):
    """MAE/DiT 2-D sin-cos table for an ``h x w`` grid in raster order: token ``(r, c)`` ->
    ``[sin(c v), cos(c v), sin(r v), cos(r v)]`` with ``v_j = 10000^(-j / (dim/4))``, ``j < dim/4``:
    the first half encodes the column, the second the row, each half ``[sin, cos]``."""
    quarter = dim // 4
    v = np.array([10000.0 ** (-j / quarter) for j in range(quarter)])
    rows = [np.concatenate([np.sin(c * v), np.cos(c * v), np.sin(r * v), np.cos(r * v)])
            for r in range(h) for c in range(w)]
    return np.stack(rows)


# ----------------------------------------------------------------------------- timestep embedding
def test_timestep_sinusoid_is_cos_then_sin_with_geometric_frequencies():
    t = torch.tensor([0.0, 1.0, 2.5, 37.0, 999.0])
    got = TimestepEmbedder.timestep_embedding(t, 256).double().numpy()
    # float32 arguments up to 999 rad carry ~1e-4 absolute error; a swapped half or another
    # frequency spacing is off by O(1).
    np.testing.assert_allclose(got, timestep_sinusoid(t.numpy()), rtol=0, atol=5e-4)
    # By hand: t = 0 gives cos 0 = 1 in the first half and sin 0 = 0 in the second; at t = 1 the
    # first frequency is 1 (cos 1, sin 1) and the last is 10000^(-127/128).
    assert got[0, :128].tolist() == [1.0] * 128 and got[0, 128:].tolist() == [0.0] * 128
    assert got[1, 0] == pytest.approx(math.cos(1.0), abs=1e-6)
    assert got[1, 128] == pytest.approx(math.sin(1.0), abs=1e-6)
    assert got[1, 255] == pytest.approx(math.sin(10000 ** (-127 / 128)), abs=1e-6)


def test_timestep_embedder_is_mlp_of_the_256_d_sinusoid():
    """``Linear(256, D)`` -> SiLU -> ``Linear(D, D)`` applied to the sinusoid, in every model."""
    for family in ("DiG", "DiT"):
        torch.manual_seed(0)
        emb = create_model(f"{family}-S/2", input_size=8, **TINY).t_embedder
        assert emb.frequency_embedding_size == 256
        lin1, act, lin2 = emb.mlp
        assert (lin1.in_features, lin1.out_features, lin2.out_features) == (256, 32, 32)
        assert isinstance(act, torch.nn.SiLU) and lin1.bias is not None and lin2.bias is not None
        t = torch.tensor([3.0, 640.0])
        freq = torch.from_numpy(timestep_sinusoid(t.numpy())).float()
        expected = lin2(torch.nn.functional.silu(lin1(freq)))
        torch.testing.assert_close(emb(t), expected, rtol=1e-4, atol=1e-5)


def test_odd_embedding_width_pads_one_zero():
    got = TimestepEmbedder.timestep_embedding(torch.tensor([5.0]), 7)
    np.testing.assert_allclose(got[0, :6].numpy(), timestep_sinusoid([5.0], 6)[0], atol=1e-6)
    assert got.shape == (1, 7) and got[0, 6] == 0


# ----------------------------------------------------------------------------- positions
@pytest.mark.parametrize("dim,grid", [(32, (4, 6)), (64, (3, 1)), (384, (16, 16))])
def test_position_table_is_mae_layout(dim, grid):
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, grid), mae_positions(dim, *grid), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["DiG", "DiT"])
def test_models_hold_the_fixed_table_of_their_grid(family):
    """``pos_embed`` is the table of the patch grid (h = H/p rows, w = W/p columns), frozen and in the
    state_dict, and the one added to the patch tokens."""
    m = create_model(f"{family}-S/2", input_size=(8, 12), **TINY)
    assert m.grid == (4, 6) and not m.pos_embed.requires_grad and "pos_embed" in m.state_dict()
    np.testing.assert_allclose(m.pos_embed[0].double().numpy(), mae_positions(32, 4, 6), atol=1e-6)
    x = torch.randn(1, 2, 10, 6)  # another grid: 5 x 3 patches
    np.testing.assert_allclose(m.pos_embed_for((5, 3), x)[0].double().numpy(), mae_positions(32, 5, 3), atol=1e-6)


# ----------------------------------------------------------------------------- final layer
def test_final_layer_is_ln_then_adaln_then_linear_and_starts_at_zero():
    torch.manual_seed(0)
    layer = FinalLayer(16, 2, 3)
    norm = layer.norm_final
    assert norm.eps == 1e-6 and not norm.elementwise_affine
    assert layer.linear.out_features == 2 * 2 * 3
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    shift, scale = layer.adaLN_modulation[1](torch.nn.functional.silu(c)).chunk(2, dim=1)
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    expected = layer.linear(normed * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(layer(x, c), expected, rtol=1e-5, atol=1e-5)
