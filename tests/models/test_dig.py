"""DiG: SREM as a property of each block equals the authors' physical flips and transposes; the
ablation options; initialisation."""
import pytest
import torch
import torch.nn.functional as F

from gladiff import create_model
from gladiff.models import block_orientation

TINY = dict(input_size=(4, 6), in_channels=2, num_classes=5, depth=8, hidden_size=32, num_heads=2)


def randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return model


def naive_forward(model, x, t, y, schedule="srem"):
    """The authors' formulation: one row-forward GLA scan over the *physical* sequence, the conv on
    the physical grid, then reverse the sequence (and transpose the grid after odd blocks)."""
    p = model.patch_size
    h, w = x.shape[2] // p, x.shape[3] // p
    tok = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed_for((h, w), x)
    c = model.t_embedder(t) + model.y_embedder(y)
    grid = (h, w)
    for i, blk in enumerate(model.blocks):
        s1, c1, g1, s2, c2, g2 = blk.adaLN_modulation(c).chunk(6, dim=1)
        n1 = blk.norm1(tok) * (1 + c1[:, None]) + s1[:, None]
        tok = tok + g1[:, None] * blk.attn(n1, grid, scan="row", reverse=False)
        n2 = blk.norm2(tok) * (1 + c2[:, None]) + s2[:, None]
        tok = tok + g2[:, None] * blk.mlp(n2)
        if blk.dwconv is not None:
            B, T, D = tok.shape
            img = tok.transpose(1, 2).reshape(B, D, *grid)
            tok = blk.dwconv(img).flatten(2).transpose(1, 2)  # the stored kernel, physical frame
        if schedule in ("srem", "flip"):
            tok = tok.flip(1)
        if schedule == "srem" and i % 2 == 1:
            B, T, D = tok.shape
            tok = tok.view(B, *grid, D).transpose(1, 2).reshape(B, T, D)
            grid = (grid[1], grid[0])
    assert grid == (h, w)  # depth is a multiple of the period: back in raster order
    return model.unpatchify(model.final_layer(tok, c), (h, w))


@pytest.mark.parametrize("schedule", ["srem", "flip", "causal"])
def test_srem_equals_physical_flips_and_transposes(schedule):
    torch.manual_seed(0)
    model = randomize(create_model("DiG-S/2", scan_schedule=schedule, **TINY)).eval()
    x, t, y = torch.randn(3, 2, 8, 12), torch.tensor([1.0, 400.0, 999.0]), torch.tensor([0, 3, 5])
    x2 = torch.randn(2, 2, 6, 10)  # another grid than the one the model was built for
    with torch.no_grad():
        ref, out = naive_forward(model, x, t, y, schedule), model(x, t, y)
        ref2, out2 = naive_forward(model, x2, t[:2], y[:2], schedule), model(x2, t[:2], y[:2])
    assert ref.abs().max() > 1e-2  # a real signal, not zeros
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out2, ref2, rtol=1e-4, atol=1e-5)

def test_naive_check_is_sensitive_to_the_schedule():
    """The equivalence test above must fail if the schedule is wrong: a 'flip' network differs from
    the physical SREM network with the same weights."""
    torch.manual_seed(0)
    srem = randomize(create_model("DiG-S/2", **TINY)).eval()
    flip = create_model("DiG-S/2", scan_schedule="flip", **TINY).eval()
    flip.load_state_dict(srem.state_dict())
    x, t, y = torch.randn(2, 2, 8, 12), torch.tensor([1.0, 50.0]), torch.tensor([0, 3])
    with torch.no_grad():
        ref = naive_forward(srem, x, t, y, "srem")
        assert (flip(x, t, y) - ref).abs().max() > 1e-3
        # and the conv frame matters too: using the stored kernel unflipped breaks equivalence
        for blk in srem.blocks:
            blk.conv_weight = (lambda b: (lambda: b.dwconv.weight))(blk)
        assert (srem(x, t, y) - ref).abs().max() > 1e-3


def test_orientation_cycle():
    got = [(o.scan, o.reverse, o.transpose, o.rot180) for o in map(block_orientation, range(8))]
    period = [("row", False, False, False), ("row", True, False, True),
              ("col", False, True, False), ("col", True, True, True)]
    assert got == period * 2
    assert all(block_orientation(i, "causal").scan == "row" and not block_orientation(i, "causal").reverse
               for i in range(5))
    assert [block_orientation(i, "flip").reverse for i in range(4)] == [False, True, False, True]
    with pytest.raises(ValueError, match="unknown scan_schedule"):
        block_orientation(0, "zigzag")


def test_dwconv_identity_init_and_ablation_options():
    base = create_model("DiG-S/2", **TINY)
    for blk in base.blocks:
        w = blk.dwconv.weight
        assert w[:, 0, 1, 1].eq(1).all() and w.sum() == w.shape[0] and blk.dwconv.bias.eq(0).all()
    rnd = create_model("DiG-S/2", dwconv_init="random", **TINY)
    assert rnd.blocks[0].dwconv.weight[:, 0, 0, 0].abs().sum() > 0
    off = create_model("DiG-S/2", dwconv=False, **TINY)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(base) - n(off) == TINY["depth"] * (9 * 32 + 32)
    # identity conv at init computes the same function as no conv
    torch.manual_seed(1)
    randomize(off)
    sd = {k: v for k, v in base.state_dict().items() if "dwconv" in k}
    base.load_state_dict({**off.state_dict(), **sd})
    x, t, y = torch.randn(2, 2, 8, 12), torch.tensor([3.0, 4.0]), torch.tensor([1, 2])
    torch.testing.assert_close(base(x, t, y), off(x, t, y))
    with pytest.raises(ValueError, match="dwconv_init"):
        create_model("DiG-S/2", dwconv_init="zeros", **TINY)
    with pytest.raises(ValueError, match="scan_schedule"):
        create_model("DiG-S/2", scan_schedule="spiral", **TINY)


def test_gla_init_gain_and_shapes():
    m = create_model("DiG-S/2", **TINY)
    attn = m.blocks[0].attn
    assert (attn.head_k_dim, attn.head_v_dim) == (8, 16)
    for lin in (attn.q_proj, attn.v_proj, attn.o_proj, attn.gk_proj[0], attn.gk_proj[1]):
        fan_out, fan_in = lin.weight.shape
        bound = 2 ** -2.5 * (6 / (fan_in + fan_out)) ** 0.5
        assert lin.weight.abs().max() <= bound + 1e-7
        assert lin.weight.abs().max() > 0.5 * bound
    assert attn.gk_proj[1].bias.eq(0).all() and attn.g_norm_weight.eq(1).all()
    # the SwiGLU keeps DiT's xavier init (gain 1)
    lin = m.blocks[0].mlp.gate_proj
    assert lin.weight.abs().max() > 2 ** -2.5 * (6 / sum(lin.weight.shape)) ** 0.5


def test_gla_module_matches_its_definition():
    """GLA block output == q/k/v/gate projections -> recurrence -> RMSNorm * swish(g) -> Wo."""
    from gladiff.ops import gla

    torch.manual_seed(0)
    attn = randomize(create_model("DiG-S/2", **TINY)).blocks[2].attn
    x = torch.randn(2, 24, 32)
    out = attn(x, (4, 6), scan="col", reverse=False)
    q, k, v, g = (p(x).view(2, 24, 2, -1) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.g_proj))
    gk = (F.logsigmoid(attn.gk_proj(x)) / 16).view(2, 24, 2, 8)
    o = gla(q, k, v, gk, scan="col", grid=(4, 6), backend="recurrent")
    o = o / (o.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * attn.g_norm_weight * g * torch.sigmoid(g)
    torch.testing.assert_close(out, attn.o_proj(o.reshape(2, 24, 32)), rtol=1e-5, atol=1e-6)


def test_backend_switch_gives_same_model_output():
    torch.manual_seed(0)
    m = randomize(create_model("DiG-S/2", **TINY)).eval()
    x, t, y = torch.randn(2, 2, 8, 12), torch.tensor([3.0, 4.0]), torch.tensor([1, 2])
    with torch.no_grad():
        a = m(x, t, y)
        m.set_gla_backend("recurrent")
        b = m(x, t, y)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_projections_equal_separate_ones():
    """The one-GEMM input projection computes the published separate projections, forward and
    backward, and leaves the state_dict as it is."""
    torch.manual_seed(0)
    m = randomize(create_model("DiG-S/2", **TINY))
    attn = m.blocks[1].attn
    x = torch.randn(2, 24, 32, dtype=torch.float64, requires_grad=True)
    attn.double()
    outs, grads = [], []
    for fused in (True, False):
        attn.fuse_projections = fused
        x.grad = None
        attn.zero_grad()
        y = attn(x, (4, 6), scan="row", reverse=True)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in attn.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert attn.fuse_projections is False and "blocks.1.attn.q_proj.weight" in m.state_dict()


def _saved_bytes_and_grads(block, x, c, grid):
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    block.zero_grad()
    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(x, c, grid)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    out.pow(2).sum().backward()
    grads = [x.grad] + [p.grad for p in block.parameters()]
    return sum(n for ptr, n in saved.items() if ptr not in params), out.detach(), grads


def test_elementwise_recomputation_keeps_values_and_saves_memory():
    """Recomputing the gate / norm / SwiGLU element-wise regions in backward gives the same output
    and gradients, and autograd keeps fewer bytes."""
    torch.manual_seed(0)
    m = randomize(create_model("DiG-S/2", **TINY)).double()
    block = m.blocks[2]
    x, c = torch.randn(2, 24, 32, dtype=torch.float64), torch.randn(2, 32, dtype=torch.float64)
    results = []
    for on in (True, False):
        block.attn.recompute_elementwise = block.mlp.recompute_elementwise = on
        results.append(_saved_bytes_and_grads(block, x, c, (4, 6)))
    (lean, out_a, grads_a), (full, out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # float64 eager: 0.89 of the bytes (under bf16 autocast and torch.compile the float32 upcasts
    # and the SwiGLU product are dropped too, the larger saving)
    assert lean < 0.92 * full, (lean, full)
