"""The quadratic-form Triton GLA kernels (``triton_quadratic``: no state, one program per block)
under Triton's CPU interpreter against the exact recurrence in float64: output and every gradient,
all four scan orders, odd T, every block size, many blocks with long memory, very negative gates,
bf16 inputs, and the forget gate formed from gate logits inside the kernels; plus the custom op's
``impl="auto"`` rule and a whole DiG. Skipped without Triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' import

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from gladiff.ops import gla  # noqa: E402
from gladiff.ops.gla import triton_chunk as K  # noqa: E402
from gladiff.ops.gla import triton_op  # noqa: E402
from gladiff.ops.gla import triton_quadratic as Q  # noqa: E402
from gladiff.ops.gla.order import scan_order  # noqa: E402
from gla_triton_helpers import ORDERS, assert_close_all, make_inputs, reference, rel  # noqa: E402

if not K._INTERPRET:
    pytest.skip("the Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def run_quadratic(q, k, v, g, do, scale, scan, reverse, grid, **kw):
    """``[o, dq, dk, dv, dg]`` from the quadratic kernels called directly."""
    o, s1, s2 = Q.gla_fwd(q, k, v, g, scale, scan == "col", reverse, *grid, **kw)
    assert s1.numel() == 0 and s2.numel() == 0  # nothing saved for backward
    return [o, *Q.gla_bwd(q, k, v, g, do, s1, s2, scale, scan == "col", reverse, *grid, **kw)]


def logit_reference(q, k, v, x, do, scale, scan, reverse, grid, n):
    """The reference with log-gates ``logsigmoid(x) / n`` formed in float64, ``dg`` on the logits."""
    xd = x.double().requires_grad_(True)
    log_g = F.logsigmoid(xd) / n
    xs = [t.double().requires_grad_(True) for t in (q, k, v)] + [log_g]
    o = gla(*xs, scale=scale, scan=scan, reverse=reverse, grid=grid, backend="recurrent")
    dq, dk, dv, dx = torch.autograd.grad(o, xs[:3] + [xd], do.double())
    return [o.detach(), dq, dk, dv, dx]


@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_matches_recurrent_odd_grid_padded_heads(scan, reverse):
    """T 255 on a 15x17 grid: 8 blocks of 32, the last one short; head sizes 20/40 (padded)."""
    grid = (15, 17)
    q, k, v, g, do = make_inputs(1, 255, 1, 20, 40)
    out = run_quadratic(q, k, v, g, do, 0.3, scan, reverse, grid)
    assert_close_all(out, reference(q, k, v, g, do, 0.3, scan, reverse, grid), 1e-5)


@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_every_block_size_with_long_memory(chunk):
    """Many blocks (13 of 16 tokens at T 200) and weak decay, so that keys many blocks back still
    count: the carried log-decay between blocks and the dg tail through S and dS."""
    grid = (10, 20)
    q, k, v, g, do = make_inputs(2, 200, 2, 16, 24, gate_scale=0.02)
    # (float32 inputs get exact float32 products whatever ``dot`` says; 64-token blocks need tf32's.)
    out = run_quadratic(q, k, v, g, do, 0.25, "col", True, grid, chunk=chunk, dot="tf32" if chunk == 64 else None)
    assert_close_all(out, reference(q, k, v, g, do, 0.25, "col", True, grid), 1e-5)


def test_odd_sequence_on_one_row():
    """T 37 on 1x37: two blocks, the second holding 5 tokens; two batches and heads."""
    grid = (1, 37)
    q, k, v, g, do = make_inputs(2, 37, 2, 8, 12)
    out = run_quadratic(q, k, v, g, do, 8 ** -0.5, "row", True, grid)
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, "row", True, grid), 1e-5)


def test_very_negative_gates_stay_finite_and_exact():
    """Log-gates hundreds below zero, some channels at -1e4 at every step; and channels at -1e4 for
    the first block, then -1e-3 (long memory from the last token of that block onwards)."""
    grid = (16, 18)
    q, k, v, g, do = make_inputs(1, 288, 1, 16, 16, gate_scale=200.0)
    g[:, :, :, :4] = -1e4
    g_scan = torch.full((288,), -1e-3)
    g_scan[:32] = -1e4
    g[0, scan_order(288, "col", False, grid), 0, 4:8] = g_scan[:, None]
    out = run_quadratic(q, k, v, g, do, 0.25, "col", False, grid)
    assert_close_all(out, reference(q, k, v, g, do, 0.25, "col", False, grid), 3e-4)


def test_bf16_inputs_keep_dg_precise():
    """bf16 q/k/v/do with bf16 score operands (the default ``dot``): o, dq, dk, dv within bf16
    rounding, dg (q dq - k dk, which cancels) much closer."""
    grid = (8, 12)
    q, k, v, g, do = make_inputs(1, 96, 2, 32, 64)
    q, k, v, do = (x.bfloat16() for x in (q, k, v, do))
    out = run_quadratic(q, k, v, g, do, 32 ** -0.5, "col", True, grid, dot="bf16-scores")
    ref = reference(q.float(), k.float(), v.float(), g, do.float(), 32 ** -0.5, "col", True, grid)
    for name, a, r in zip(["o", "dq", "dk", "dv"], out[:4], ref[:4]):
        assert a.dtype == torch.bfloat16 and rel(a, r) < 1e-2, name
    assert out[4].dtype == torch.float32 and rel(out[4], ref[4]) < 1e-3


@pytest.mark.parametrize("scan,reverse", [("row", False), ("col", True)])
def test_gate_logits_inside_the_kernels(scan, reverse):
    """``gate_logit_normalizer``: the kernels form logsigmoid(x) / n from bf16 logits (masked rows
    and padded channels contribute nothing: logsigmoid(0) is not 0) and return the gradient on the
    logits, in their dtype; logits of both signs and large magnitude."""
    grid = (9, 11)
    q, k, v, _, do = make_inputs(1, 99, 2, 20, 24)
    x = (torch.randn(1, 99, 2, 20) * 8).bfloat16()
    out = run_quadratic(q, k, v, x, do, 0.3, scan, reverse, grid, gate_logit_normalizer=16.0)
    assert out[4].dtype == torch.bfloat16
    ref = logit_reference(q, k, v, x.float(), do, 0.3, scan, reverse, grid, 16.0)
    assert_close_all(out[:4], ref[:4], 1e-5)
    assert rel(out[4], ref[4]) < 4e-3  # bf16 rounding of the logit gradient


def test_log1p_is_accurate_for_small_arguments():
    """The kernels' log(1 + exp(-|x|)): for |x| = 30 a plain log(1 + y) would round to 0."""
    x = torch.tensor([[30.0, -30.0, 0.0, 3.0, -88.0, 88.0]]).repeat(16, 1)
    out = run_quadratic(*[torch.ones(1, 16, 1, 6)] * 2, torch.ones(1, 16, 1, 16), x[None, :, None],
                        torch.ones(1, 16, 1, 16), 1.0, "row", False, (1, 16), gate_logit_normalizer=1.0)
    ref = logit_reference(*[torch.ones(1, 16, 1, 6)] * 2, torch.ones(1, 16, 1, 16), x[None, :, None],
                          torch.ones(1, 16, 1, 16), 1.0, "row", False, (1, 16), 1.0)
    assert_close_all(out, ref, 1e-6)


def test_auto_picks_quadratic_for_short_sequences_only(monkeypatch):
    """``impl="auto"``: quadratic up to MAX_T tokens, sequential beyond; gla(backend="triton") under
    torch.compile(fullgraph=True) runs the quadratic kernels forward and backward, with gate logits."""
    assert triton_op.resolve_impl("auto", Q.MAX_T) == "quadratic"
    assert triton_op.resolve_impl("auto", Q.MAX_T + 1) == "sequential"
    assert triton_op.resolve_impl("parallel", 16) == "parallel"
    calls = []
    for name in ("gla_fwd", "gla_bwd"):
        fn = getattr(Q, name)
        monkeypatch.setattr(Q, name, lambda *a, _fn=fn, _name=name, **kw: calls.append(_name) or _fn(*a, **kw))
    monkeypatch.setitem(K.CONFIG, "impl", "auto")
    grid = (5, 7)
    q, k, v, _, do = make_inputs(1, 35, 2, 8, 12)
    x = torch.randn(1, 35, 2, 8) * 3
    xs = [t.clone().requires_grad_(True) for t in (q, k, v, x)]

    def f(q, k, v, x):
        return gla(q, k, v, x, scan="col", reverse=True, grid=grid, backend="triton", gate_logit_normalizer=16.0)

    o = torch.compile(f, backend="aot_eager", fullgraph=True)(*xs)
    out = [o.detach()] + list(torch.autograd.grad(o, xs, do))
    assert calls == ["gla_fwd", "gla_bwd"]
    assert_close_all(out, logit_reference(q, k, v, x, do, 8 ** -0.5, "col", True, grid, 16.0), 1e-5)


def test_other_impls_take_gate_logits_through_the_op(monkeypatch):
    """The sequential kernels get the logits' log-gates formed around them by the op: same values and
    logit gradients as the reference."""
    monkeypatch.setitem(K.CONFIG, "impl", "sequential")
    grid = (6, 6)
    q, k, v, _, do = make_inputs(1, 36, 1, 8, 8)
    x = torch.randn(1, 36, 1, 8) * 3
    xs = [t.clone().requires_grad_(True) for t in (q, k, v, x)]
    o = gla(*xs, scan="row", reverse=True, grid=grid, backend="triton", gate_logit_normalizer=4.0)
    out = [o.detach()] + list(torch.autograd.grad(o, xs, do))
    assert_close_all(out, logit_reference(q, k, v, x, do, 8 ** -0.5, "row", True, grid, 4.0), 1e-5)


def test_whole_dig_matches_the_recurrent_reference():
    """A tiny DiG (4 blocks: all four SREM orders) on the Triton backend with ``impl="auto"`` (the
    quadratic kernels, gate logits inside them) against the same weights on the recurrent backend:
    outputs and every parameter gradient."""
    from gladiff.models import create_model

    model = create_model("DiG-S/2", input_size=8, in_channels=1, num_classes=10, depth=4, hidden_size=64,
                         num_heads=2, gla_backend="triton").eval()
    # Random gates and a random output norm weight: the identity-like init would hide mistakes.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    results = []
    for backend in ("triton", "recurrent"):
        model.set_gla_backend(backend)
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=2e-4, atol=2e-5)
