"""The chunk-parallel Triton GLA kernels (``triton_parallel``) under Triton's CPU interpreter
against the exact recurrence in float64: output and every gradient, all four scan orders, odd T,
several chunks and several blocks of the state scan, padded head sizes, very negative gates, bf16
inputs; plus the custom ops dispatching to them under torch.compile. Without Triton the module fails
to collect (GLADIFF_TEST_WITHOUT_TRITON=1: skipped; triton_check.py)."""
import pytest
import torch
from triton_check import import_kernels, unavailable

K, _problem = import_kernels("gla.triton_chunk")  # sets TRITON_INTERPRET=1 before the kernels' import
if _problem:
    unavailable(_problem, module_level=True)

from gladiff.ops import gla  # noqa: E402
from gladiff.ops.gla import triton_impl  # noqa: E402
from gladiff.ops.gla import triton_parallel as P  # noqa: E402
from gladiff.ops.gla.order import scan_order  # noqa: E402
from gla_triton_helpers import ORDERS, assert_close_all, make_inputs, reference, rel  # noqa: E402


def run_parallel(q, k, v, g, do, scale, scan, reverse, grid, **kw):
    """``[o, dq, dk, dv, dg]`` from the parallel kernels called directly."""
    o, s1, s2 = P.gla_fwd(q, k, v, g, scale, scan == "col", reverse, *grid, **kw)
    assert s1.numel() == 0 and s2.numel() == 0  # nothing saved for backward
    return [o, *P.gla_bwd(q, k, v, g, do, s1, s2, scale, scan == "col", reverse, *grid, **kw)]


@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_matches_recurrent_odd_grid_padded_heads(scan, reverse):
    """T 255 on a 15x17 grid (8 chunks of 32, the last one short), head sizes 20/40 (padded to 32/64)."""
    grid = (15, 17)
    q, k, v, g, do = make_inputs(1, 255, 1, 20, 40)
    out = run_parallel(q, k, v, g, do, 0.3, scan, reverse, grid)
    assert_close_all(out, reference(q, k, v, g, do, 0.3, scan, reverse, grid), 1e-5)


def test_odd_sequence_on_one_row():
    """T 37 on 1x37: two chunks, the second holding 5 tokens; two batches and heads."""
    grid = (1, 37)
    q, k, v, g, do = make_inputs(2, 37, 2, 8, 12)
    out = run_parallel(q, k, v, g, do, 8 ** -0.5, "col", True, grid)
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, "col", True, grid), 1e-5)


@pytest.mark.parametrize("scan,reverse", [("row", False), ("col", True)])
def test_several_scan_blocks(scan, reverse):
    """19 chunks of 16 in scan blocks of 16: the carry between blocks, a partial last block, and the
    reversed scan of the state gradients (its partial block comes first in memory)."""
    grid = (15, 20)
    # Weak decay (about exp(-0.3) per chunk) so that a state outlives a scan block.
    q, k, v, g, do = make_inputs(1, 300, 1, 16, 16, gate_scale=0.02)
    out = run_parallel(q, k, v, g, do, 0.25, scan, reverse, grid, chunk=16, scan_block=16)
    assert_close_all(out, reference(q, k, v, g, do, 0.25, scan, reverse, grid), 1e-5)


def test_very_negative_gates_stay_finite_and_exact():
    """Log-gates hundreds below zero, some channels at -1e4 at every step, across scan blocks; and
    channels at -1e4 for the first chunk, then -1e-3 (long memory): a scan that subtracted large
    cumulative log-decays would lose those small ones to float32 rounding."""
    grid = (16, 18)
    q, k, v, g, do = make_inputs(1, 288, 1, 16, 16, gate_scale=200.0)
    g[:, :, :, :4] = -1e4
    g_scan = torch.full((288,), -1e-3)
    g_scan[:16] = -1e4
    g[0, scan_order(288, "col", False, grid), 0, 4:8] = g_scan[:, None]
    out = run_parallel(q, k, v, g, do, 0.25, "col", False, grid, chunk=16, scan_block=16)
    # float32 cumulative sums of gates near -1e4 carry ~1e-3 absolute error into the exponents.
    assert_close_all(out, reference(q, k, v, g, do, 0.25, "col", False, grid), 3e-4)


def test_bf16_inputs_float32_gates():
    """DiG's call: bf16 q/k/v/do, float32 log-gates; dg keeps float32 precision."""
    grid = (8, 8)
    q, k, v, g, do = make_inputs(1, 64, 2, 32, 64)
    q, k, v, do = (x.bfloat16() for x in (q, k, v, do))
    out = run_parallel(q, k, v, g, do, 32 ** -0.5, "row", True, grid)
    ref = reference(q.float(), k.float(), v.float(), g, do.float(), 32 ** -0.5, "row", True, grid)
    assert out[0].dtype == torch.bfloat16 and out[4].dtype == torch.float32
    for name, a, r in zip(["o", "dq", "dk", "dv"], out[:4], ref[:4]):
        assert rel(a, r) < 1e-2, name
    assert rel(out[4], ref[4]) < 1e-4


def test_custom_op_dispatches_to_parallel_under_compile(monkeypatch):
    """impl=parallel: gla(backend="triton") traced by torch.compile(fullgraph=True) runs the parallel
    kernels forward and backward (the fake impls give their saved-tensor shapes) and matches the
    reference."""
    calls = []
    for name in ("gla_fwd", "gla_bwd"):
        fn = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _fn=fn, _name=name, **kw: calls.append(_name) or _fn(*a, **kw))
    monkeypatch.setitem(K.CONFIG, "impl", "parallel")
    grid = (5, 7)
    q, k, v, g, do = make_inputs(1, 35, 2, 8, 12)
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g)]

    def f(q, k, v, g):
        return gla(q, k, v, g, scan="col", reverse=False, grid=grid, backend="triton") * 2

    o = torch.compile(f, backend="aot_eager", fullgraph=True)(*xs)
    out = [o.detach() / 2] + [d / 2 for d in torch.autograd.grad(o, xs, do)]
    assert calls == ["gla_fwd", "gla_bwd"]
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, "col", False, grid), 1e-5)


def test_impl_is_validated(monkeypatch):
    monkeypatch.setattr(K, "CONFIG", dict(K.CONFIG))
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "impl=parallel,chunk=16")
    K._config_from_env()
    assert K.CONFIG["impl"] == "parallel" and K.CONFIG["chunk"] == 16
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "impl=fast")
    with pytest.raises(ValueError, match="impl must be one of"):
        K._config_from_env()
    with pytest.raises(ValueError, match="scan_block"):
        P.gla_fwd(*make_inputs(1, 16, 1, 8, 8)[:4], 0.5, False, False, 1, 16, scan_block=8)


def test_triton_impl_switches_and_restores():
    before = K.CONFIG["impl"]
    with triton_impl("parallel"):
        assert K.CONFIG["impl"] == "parallel"
    assert K.CONFIG["impl"] == before
    with triton_impl(None):
        assert K.CONFIG["impl"] == before
    with pytest.raises(ValueError, match="implementation must be one of"):
        with triton_impl("fastest"):
            pass


@pytest.mark.parametrize("impl", ["sequential", "parallel"])
def test_bf16_score_operands_keep_dg_precise(impl):
    """dot="bf16-scores": bf16 operands for the score products only. o and dv carry bf16 operand
    rounding; dg stays at float32-operand precision (all-bf16 operands put it at 1-3e-2 here)."""
    M = P if impl == "parallel" else K
    grid = (8, 12)
    q, k, v, g, do = make_inputs(1, 96, 1, 32, 64)
    q, k, v, do = (x.bfloat16() for x in (q, k, v, do))
    o, s1, s2 = M.gla_fwd(q, k, v, g, 32 ** -0.5, True, True, *grid, dot="bf16-scores")
    grads = M.gla_bwd(q, k, v, g, do, s1, s2, 32 ** -0.5, True, True, *grid, dot="bf16-scores")
    ref = reference(q.float(), k.float(), v.float(), g, do.float(), 32 ** -0.5, "col", True, grid)
    for name, a, r in zip(["o", "dq", "dk", "dv"], [o, *grads[:3]], ref[:4]):
        assert rel(a, r) < 1e-2, name
    assert rel(grads[3], ref[4]) < 1e-3


@pytest.mark.parametrize("impl", ["sequential", "parallel"])
def test_fake_impls_match_the_kernels(impl):
    """torch.library.opcheck: the ops' schemas hold and their fake impls give the shapes and dtypes
    each implementation really returns (saved tensors included), forward and backward."""
    from gladiff.ops.gla import triton_op  # noqa: F401  (registers the ops)

    q, k, v, g, do = make_inputs(1, 40, 1, 8, 8)
    args = (0.3, True, False, 5, 8, impl)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.gladiff.gla_fwd.default, (q, k, v, g, *args), test_utils=checks)
    _, s1, s2 = torch.ops.gladiff.gla_fwd(q, k, v, g, *args)
    torch.library.opcheck(torch.ops.gladiff.gla_bwd.default, (q, k, v, g, do, s1, s2, *args), test_utils=checks)
