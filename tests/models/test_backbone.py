"""The DiT initialisation recipe every model starts from (docs/architecture.md: "adaLN-Zero everywhere", DiT's
``initialize_weights``), checked on the parameters and on what they compute: every block starts as
the identity map, the output starts at zero, embedders are N(0, 0.02), linears xavier-uniform with
zero biases, the label table has the null row."""
import math

import pytest
import torch

from gladiff import create_model

TINY = dict(input_size=8, in_channels=2, num_classes=5, depth=4, hidden_size=64, num_heads=2)
FAMILIES = ["DiG", "DiT"]


def _model(family, **kw):
    torch.manual_seed(0)
    return create_model(f"{family}-S/2", **{**TINY, **kw})


@pytest.mark.parametrize("family", FAMILIES)
def test_adaln_modulation_of_every_block_and_the_final_layer_starts_at_zero(family):
    m = _model(family)
    mods = [blk.adaLN_modulation for blk in m.blocks] + [m.final_layer.adaLN_modulation]
    for mod in mods:
        act, lin = mod
        assert isinstance(act, torch.nn.SiLU)
        assert torch.count_nonzero(lin.weight) == 0 and torch.count_nonzero(lin.bias) == 0
    assert [mod[1].out_features for mod in mods] == [6 * 64] * 4 + [2 * 64]
    lin = m.final_layer.linear
    assert torch.count_nonzero(lin.weight) == 0 and torch.count_nonzero(lin.bias) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_starts_as_the_identity(family):
    """adaLN-Zero gates (and DiG's identity conv): a fresh block returns its input for any input and
    condition, so a fresh network is the patch embedding followed by the final layer."""
    m = _model(family, input_size=(8, 12))
    x, c = torch.randn(2, 24, 64) * 3, torch.randn(2, 64) * 3
    for blk in m.blocks:
        torch.testing.assert_close(blk(x, c, (4, 6)), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_embedders_and_linears_follow_the_dit_recipe(family):
    m = _model(family, hidden_size=128, num_classes=40)
    # label table: num_classes + 1 rows (the null class), N(0, 0.02); labels dropped with p = 0.1
    table = m.y_embedder.embedding_table.weight
    assert table.shape == (41, 128) and m.y_embedder.dropout_prob == 0.1
    assert table.std().item() == pytest.approx(0.02, rel=0.1) and abs(table.mean().item()) < 0.002
    # timestep MLP weights N(0, 0.02), biases zero
    for lin in (m.t_embedder.mlp[0], m.t_embedder.mlp[2]):
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.count_nonzero(lin.bias) == 0
    # patch embedding: xavier-uniform over the flattened kernel (fan_in C p p, fan_out D), zero bias
    w = m.x_embedder.weight
    assert w.shape == (128, 2, 2, 2)
    bound = math.sqrt(6 / (2 * 2 * 2 + 128))
    assert bound * 0.9 < w.abs().max().item() <= bound and torch.count_nonzero(m.x_embedder.bias) == 0
    # the blocks' own linears (DiG's GLA projections aside: gain 2^-2.5, test_dig.py): xavier, zero bias
    blk = m.blocks[1]
    linears = ([blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2] if family == "DiT"
               else [blk.mlp.gate_proj, blk.mlp.down_proj])
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert bound * 0.9 < lin.weight.abs().max().item() <= bound
        assert lin.bias is None or torch.count_nonzero(lin.bias) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_norms_have_no_affine_and_eps_1e_6(family):
    m = _model(family)
    norms = [n for blk in m.blocks for n in (blk.norm1, blk.norm2)] + [m.final_layer.norm_final]
    assert all(n.eps == 1e-6 and not n.elementwise_affine for n in norms)
