"""The GLA operator: every backend against the exact recurrence, and the recurrence against a
brute-force closed form. Random inputs seeded per test (tests/ops/conftest.py); float64 for exact
comparisons."""
import pytest
import torch
import torch.nn.functional as F

from gladiff.ops import gla
from gladiff.ops.gla import available_backends, resolve_backend, scan_order

ORDERS = [("row", False), ("row", True), ("col", False), ("col", True)]


def make_inputs(B, T, H, dk, dv, dtype=torch.float64, gate_scale=1.0, seed=None, requires_grad=False):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None  # None: the seeded global one
    q = torch.randn(B, T, H, dk, generator=gen, dtype=dtype)
    k = torch.randn(B, T, H, dk, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, dv, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, dk, generator=gen, dtype=dtype) * 2) * gate_scale
    return [x.requires_grad_(requires_grad) for x in (q, k, v, g)]


def brute_force(q, k, v, g, scale, perm):
    """o_t = sum_{s <= t in scan order} (scale q_t * exp(sum_{s < u <= t} g_u)) . k_s  v_s."""
    qs, ks, vs, gs = (x[:, perm] for x in (q, k, v, g))
    T = qs.shape[1]
    cum = gs.cumsum(1)  # [B, T, H, dk]
    o = torch.zeros_like(vs)
    for t in range(T):
        decay = (cum[:, t:t + 1] - cum[:, : t + 1]).exp()  # [B, s, H, dk]
        w = (qs[:, t:t + 1] * scale * decay * ks[:, : t + 1]).sum(-1)  # [B, s, H]
        o[:, t] = (w.unsqueeze(-1) * vs[:, : t + 1]).sum(1)
    out = torch.empty_like(o)
    out[:, perm] = o
    return out


@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_recurrent_matches_closed_form(scan, reverse):
    q, k, v, g = make_inputs(2, 12, 2, 4, 3)
    grid = (3, 4)
    perm = scan_order(12, scan, reverse, grid)
    ref = brute_force(q, k, v, g, 0.5, perm)
    out = gla(q, k, v, g, scale=0.5, scan=scan, reverse=reverse, grid=grid, backend="recurrent")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_scan_orders_are_what_they_say():
    # 2 x 3 grid, raster indices 0..5:  row: 0 1 2 3 4 5;  col (column-major): 0 3 1 4 2 5
    assert scan_order(6, "row", False, (2, 3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert scan_order(6, "row", True, (2, 3)).tolist() == [5, 4, 3, 2, 1, 0]
    assert scan_order(6, "col", False, (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_order(6, "col", True, (2, 3)).tolist() == [5, 2, 4, 1, 3, 0]


@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_scan_equals_physically_permuted_sequence(scan, reverse):
    """scan/reverse equals a row-forward scan of the physically reordered tokens (the authors' way)."""
    h, w = 5, 7
    q, k, v, g = make_inputs(1, h * w, 2, 4, 6)

    def physical(x):
        if scan == "col":
            x = x.view(1, h, w, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
        return x.flip(1) if reverse else x

    def unphysical(o):
        o = o.flip(1) if reverse else o
        if scan == "col":
            o = o.view(1, w, h, *o.shape[2:]).transpose(1, 2).reshape(o.shape)
        return o

    ref = unphysical(gla(*(physical(x) for x in (q, k, v, g)), backend="recurrent"))
    out = gla(q, k, v, g, scan=scan, reverse=reverse, grid=(h, w), backend="recurrent")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scan,reverse", ORDERS)
@pytest.mark.parametrize("T,grid", [(37, (1, 37)), (100, (10, 10)), (150, (10, 15)), (200, (8, 25))])
def test_chunk_matches_recurrent_fp64(scan, reverse, T, grid):
    q, k, v, g = make_inputs(2, T, 2, 8, 16, requires_grad=True)
    ref = gla(q, k, v, g, scan=scan, reverse=reverse, grid=grid, backend="recurrent")
    do = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v, g), do)
    out = gla(q, k, v, g, scan=scan, reverse=reverse, grid=grid, backend="chunk")
    grads = torch.autograd.grad(out, (q, k, v, g), do)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    for a, b, name in zip(grads, ref_grads, "qkvg"):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"d{name}")


def test_chunk_fp32_matches_fp64_reference():
    q, k, v, g = make_inputs(2, 130, 3, 32, 64)
    ref = gla(q, k, v, g, scan="col", reverse=True, grid=(10, 13), backend="recurrent")
    out = gla(*(x.float() for x in (q, k, v, g)), scan="col", reverse=True, grid=(10, 13), backend="chunk")
    assert out.dtype == torch.float32
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("backend", ["recurrent", "chunk"])
@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_gradcheck(backend, scan, reverse):
    q, k, v, g = make_inputs(1, 6, 1, 2, 3, requires_grad=True)
    fn = lambda *xs: gla(*xs, scan=scan, reverse=reverse, grid=(2, 3), backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, g), eps=1e-6, atol=1e-7)


def test_chunk_gradcheck_across_chunks_and_subchunks():
    # T=40 with chunk 16 / sub-chunk 8: several chunks, several sub-chunks, a ragged tail.
    from gladiff.ops.gla.chunk import gla_chunk

    q, k, v, g = make_inputs(1, 40, 1, 2, 2, requires_grad=True)
    fn = lambda *xs: gla_chunk(*xs, 0.7, chunk_size=16, sub_chunk=8)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, g), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("gate", [-1e4, -300.0])
def test_very_negative_gates_stay_finite(gate):
    q, k, v, _ = make_inputs(1, 150, 2, 8, 8, requires_grad=True)
    g = torch.full_like(q, gate).requires_grad_(True)
    g2 = g.detach().clone()
    g2[:, ::7] = 0.0  # mix of "forget everything" and "keep everything"
    g2.requires_grad_(True)
    for gates in (g, g2):
        ref = gla(q, k, v, gates, backend="recurrent")
        out = gla(q, k, v, gates, backend="chunk")
        grads = torch.autograd.grad(out.sum(), (q, k, v, gates))
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(x).all() for x in grads)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_gate_zero_is_plain_causal_linear_attention():
    q, k, v, _ = make_inputs(1, 20, 1, 4, 5)
    g = torch.zeros_like(q)
    scores = (q[:, :, 0] @ k[:, :, 0].transpose(-1, -2)).tril() * 0.5  # [1, T, T]
    ref = (scores @ v[:, :, 0]).unsqueeze(2)
    for backend in ("recurrent", "chunk"):
        torch.testing.assert_close(gla(q, k, v, g, scale=0.5, backend=backend), ref)


def test_bad_inputs_raise_clear_errors():
    q, k, v, g = make_inputs(1, 6, 1, 2, 3)
    with pytest.raises(ValueError, match="scan must be one of"):
        gla(q, k, v, g, scan="diag")
    with pytest.raises(ValueError, match="needs grid"):
        gla(q, k, v, g, scan="col")
    with pytest.raises(ValueError, match="does not hold T=6"):
        gla(q, k, v, g, scan="col", grid=(2, 2))
    with pytest.raises(ValueError, match="unknown GLA backend"):
        gla(q, k, v, g, backend="cuda-magic")
    with pytest.raises(ValueError, match="share a shape"):
        gla(q, k[:, :5], v, g)
    with pytest.raises(ValueError, match="v must be"):
        gla(q, k, v[:, :5], g)
    with pytest.raises(ValueError, match="q must be"):
        gla(q[0], k[0], v[0], g[0])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            gla(q, k, v, g, backend="fla")


def test_auto_backend_on_cpu_is_chunk():
    assert resolve_backend("auto", "cpu") == "chunk"
    assert available_backends("cpu")[-1] == "recurrent"


def test_output_dtype_follows_input():
    q, k, v, g = make_inputs(1, 16, 1, 4, 4, dtype=torch.bfloat16)
    out = gla(q, k, v, g.float(), backend="chunk")
    assert out.dtype == torch.bfloat16 and out.shape == v.shape


# ----------------------------------------------------------------------------- gate values (issue 16)
def _with_minus_inf(g):
    """``g`` with -inf gates: single channels, whole tokens, a run of tokens, the last token."""
    g = g.detach().clone()
    T = g.shape[1]
    g[:, 5, :, 0] = float("-inf")
    g[:, 20] = float("-inf")
    g[:, 70:75, 1] = float("-inf")
    g[:, T - 1] = float("-inf")
    return g


@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_minus_inf_gates_agree_between_backends(scan, reverse):
    """-inf is a legitimate "forget everything" (the state times exp(-inf) = 0): the chunked form,
    whose exponents are differences of cumulative gates (-inf - -inf = NaN), must give what the
    recurrence gives, forward and backward, across chunks and sub-chunks."""
    q, k, v, g = make_inputs(2, 150, 2, 4, 3)
    g = _with_minus_inf(g)
    xs = [x.requires_grad_(True) for x in (q, k, v, g)]
    out = {}
    for backend in ("recurrent", "chunk"):
        o = gla(*xs, scan=scan, reverse=reverse, grid=(10, 15), backend=backend)
        out[backend] = [o, *torch.autograd.grad((o * o).sum(), xs)]
    for a, b in zip(out["chunk"], out["recurrent"]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["recurrent", "chunk"])
def test_minus_inf_gate_starts_afresh(backend):
    """Independent of the recurrence: with a -inf gate on every channel of token u, the outputs from
    u on are those of the sequence that starts at u (with an ordinary gate there), and the outputs
    before u those of the prefix."""
    q, k, v, g = make_inputs(1, 90, 2, 4, 3)
    u = 67  # in the second chunk, not on a sub-chunk boundary
    cut = g.clone()
    cut[:, u] = float("-inf")
    out = gla(q, k, v, cut, backend=backend)
    fresh = gla(q[:, u:], k[:, u:], v[:, u:], g[:, u:], backend="recurrent")
    prefix = gla(q[:, :u], k[:, :u], v[:, :u], g[:, :u], backend="recurrent")
    torch.testing.assert_close(out[:, u:], fresh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[:, :u], prefix, rtol=1e-10, atol=1e-10)


def test_minus_inf_gates_under_torch_compile():
    """Traced, the chunked form cannot look for -inf gates first: it always counts them; the values
    must still be the recurrence's (and the gate check must not break the graph)."""
    q, k, v, g = make_inputs(1, 40, 1, 4, 4)
    g[:, 12, :, 2] = g[:, 30] = float("-inf")
    compiled = torch.compile(lambda *xs: gla(*xs, backend="chunk"), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, g), gla(q, k, v, g, backend="recurrent"),
                               rtol=1e-9, atol=1e-9)
    torch._dynamo.reset()


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["recurrent", "chunk"])
def test_positive_or_nan_gates_are_refused(bad, backend):
    """A gate exp(g) > 1 grows the state without bound (outputs up to 1e18 or NaN): an error that
    names the rule, unless the caller vouches for its gates (check_gates=False)."""
    q, k, v, g = make_inputs(1, 16, 1, 4, 4)
    g[0, 3, 0, 1] = bad
    with pytest.raises(ValueError, match="must be <= 0"):
        gla(q, k, v, g, backend=backend)
    gla(q, k, v, g, backend=backend, check_gates=False)  # no check: the caller's responsibility


def test_integer_tensors_are_refused():
    """Integer inputs would be truncated inside the kernels: refused, naming the tensor."""
    q, k, v, g = make_inputs(1, 8, 1, 2, 2)
    as_int = lambda x: (x * 10).to(torch.int32)  # noqa: E731
    with pytest.raises(ValueError, match="q must be a floating-point tensor, got torch.int32"):
        gla(as_int(q), as_int(k), as_int(v), g, backend="chunk")
    with pytest.raises(ValueError, match="g must be a floating-point tensor"):
        gla(q, k, v, as_int(g), backend="chunk")


def test_dig_does_not_check_its_gates(monkeypatch):
    """DiG's gates are logsigmoid(.) / 16 <= 0 by construction: its forward pass must not pay the
    value check (a device sync per block on a GPU, impossible inside CUDA graphs)."""
    import importlib

    from gladiff import create_model

    gla_module = importlib.import_module("gladiff.ops.gla")  # the package; `gladiff.ops.gla` is the function

    def fail(*args):
        raise AssertionError("the gate values were checked")

    monkeypatch.setattr(gla_module, "_check_gate_values", fail)
    model = create_model("DiG-S/4", input_size=8, in_channels=1, num_classes=3, depth=1, hidden_size=32,
                         num_heads=1)
    model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 5.0]), torch.tensor([0, 2]))
    with pytest.raises(AssertionError, match="checked"):  # the spy is live: a direct call reaches it
        gla(*make_inputs(1, 4, 1, 2, 2, dtype=torch.float32))
