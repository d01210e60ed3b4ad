"""Our Triton GLA kernels under Triton's CPU interpreter (TRITON_INTERPRET=1) against the exact
recurrence in float64: output and every gradient, all four scan orders, odd T, several segments,
head sizes that are not powers of two, very negative gates; plus the custom op under torch.compile.
The gradient tests run every backward, ``bwd="fused"`` (one kernel), ``bwd="split"`` (a dq launch,
then a dk/dv/dg launch) and ``bwd="onepass"`` (a chunk-state launch, then one backwards walk).
Without Triton the module fails to collect (GLADIFF_TEST_WITHOUT_TRITON=1: skipped; triton_check.py)."""
import pytest
import torch
from triton_check import import_kernels, unavailable

K, _problem = import_kernels("gla.triton_chunk")  # sets TRITON_INTERPRET=1 before the kernels' import
if _problem:
    unavailable(_problem, module_level=True)

from gladiff.ops import gla  # noqa: E402
from gladiff.ops.gla import resolve_backend  # noqa: E402
from gla_triton_helpers import ORDERS, assert_close_all, make_inputs, reference, rel  # noqa: E402


BWDS = ["fused", "split", "onepass"]


def test_every_backward_is_tested():
    assert tuple(BWDS) == K.BWDS


@pytest.fixture
def bwd_kernel_passes(monkeypatch):
    """Records the ``(DQ_PASS, DKV_PASS, ONEPASS, PREFETCH)`` of every backward launch, and "states" for
    each launch of the chunk-state kernel: proof of which backward ran."""
    seen = []
    launch = K._launch

    def spy(kernel, *args, **kwargs):
        if kernel is K._bwd_kernel:
            seen.append((kwargs.get("DQ_PASS", True), kwargs.get("DKV_PASS", True), kwargs.get("ONEPASS", False),
                         kwargs["PREFETCH"]))
        elif kernel is K._chunk_states_kernel:
            seen.append("states")
        return launch(kernel, *args, **kwargs)

    monkeypatch.setattr(K, "_launch", spy)
    return seen


EXPECTED_PASSES = {"fused": [(True, True, False)], "split": [(True, False, False), (False, True, False)],
                   "onepass": ["states", (False, True, True)]}


def _passes(seen, prefetch):
    """``seen`` as recorded with the prefetch flag of each backward launch checked to be ``prefetch``."""
    launches = [x for x in seen if x != "states"]
    assert all(p == bool(prefetch) for *_, p in launches), seen
    return [x if x == "states" else tuple(x[:3]) for x in seen]


@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("bwd", BWDS)
@pytest.mark.parametrize("scan,reverse", ORDERS)
def test_public_op_matches_recurrent(scan, reverse, bwd, prefetch, monkeypatch, bwd_kernel_passes):
    """Through gla(backend="triton"): the custom op, its autograd, odd T and padded head sizes;
    the backward chosen by ``CONFIG["bwd"]`` (GLADIFF_GLA_TRITON=bwd=...), with and without its
    prefetch (odd T: the last chunk is partial, so the prefetch masks must hold)."""
    monkeypatch.setitem(K.CONFIG, "bwd", bwd)
    monkeypatch.setitem(K.CONFIG, "prefetch", prefetch)
    grid = (5, 7)
    q, k, v, g, do = make_inputs(1, 35, 2, 8, 12)
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g)]
    o = gla(*xs, scan=scan, reverse=reverse, grid=grid, backend="triton")
    out = [o.detach()] + list(torch.autograd.grad(o, xs, do))
    assert _passes(bwd_kernel_passes, prefetch) == EXPECTED_PASSES[bwd]
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, scan, reverse, grid), 1e-5)


@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("bwd", BWDS)
@pytest.mark.parametrize("scan,reverse", [("row", True), ("col", False)])
def test_segments_match_recurrent(scan, reverse, bwd, prefetch, monkeypatch, bwd_kernel_passes):
    """Several segments (state handed across segment boundaries, last segment short), forced small.
    The split dk/dv/dg pass takes each segment's end state from the next segment's saved start.
    With prefetch, a segment's first and last chunks must not read across its boundary."""
    monkeypatch.setitem(K.CONFIG, "prefetch", prefetch)
    grid = (10, 15)
    q, k, v, g, do = make_inputs(1, 150, 1, 16, 32)
    o, s0, gs = K.gla_fwd(q, k, v, g, 0.3, scan == "col", reverse, *grid, segment=64)
    assert s0.shape[1] == 3  # 150 tokens in segments of 64
    grads = K.gla_bwd(q, k, v, g, do, s0, gs, 0.3, scan == "col", reverse, *grid, segment=64, bwd=bwd)
    assert _passes(bwd_kernel_passes, prefetch) == EXPECTED_PASSES[bwd]
    assert_close_all([o, *grads], reference(q, k, v, g, do, 0.3, scan, reverse, grid), 1e-5)


@pytest.mark.parametrize("bwd", BWDS)
def test_very_negative_gates_stay_finite_and_exact(bwd):
    """Log-gates of hundreds below zero: any positive exponent would overflow to inf / NaN."""
    grid = (8, 12)
    q, k, v, g, do = make_inputs(1, 96, 1, 16, 16, gate_scale=200.0)
    g[:, :, :, :4] = -1e4  # some channels forget everything at every step
    o, s0, gs = K.gla_fwd(q, k, v, g, 0.25, True, True, *grid, segment=64)
    grads = K.gla_bwd(q, k, v, g, do, s0, gs, 0.25, True, True, *grid, segment=64, bwd=bwd)
    # float32 cumulative sums of gates near -1e4 carry ~1e-3 absolute error into the exponents.
    assert_close_all([o, *grads], reference(q, k, v, g, do, 0.25, "col", True, grid), 3e-4)


@pytest.mark.parametrize("bwd", BWDS)
def test_compiles_without_graph_breaks(bwd, monkeypatch):
    """The custom op (fake impl + autograd) lets torch.compile trace gla() in one graph, whichever
    backward runs behind it."""
    monkeypatch.setitem(K.CONFIG, "bwd", bwd)
    grid = (4, 4)
    q, k, v, g, do = make_inputs(1, 16, 1, 8, 8)
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g)]

    def f(q, k, v, g):
        return gla(q, k, v, g, scan="col", reverse=True, grid=grid, backend="triton") * 2

    o = torch.compile(f, backend="aot_eager", fullgraph=True)(*xs)
    out = [o.detach() / 2] + [d / 2 for d in torch.autograd.grad(o, xs, do)]
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, "col", True, grid), 1e-5)


def test_bwd_and_register_cap_are_validated(monkeypatch):
    monkeypatch.setattr(K, "CONFIG", dict(K.CONFIG))
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "bwd=split")
    K._config_from_env()
    assert K.CONFIG["bwd"] == "split"
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "bwd=onepass")
    K._config_from_env()
    assert K.CONFIG["bwd"] == "onepass"
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "bwd=both")
    with pytest.raises(ValueError, match="bwd must be one of"):
        K._config_from_env()
    q, k, v, g, do = make_inputs(1, 16, 1, 8, 8)
    o, s0, gs = K.gla_fwd(q, k, v, g, 0.5, False, False, 1, 16)
    with pytest.raises(ValueError, match="bwd must be one of"):
        K.gla_bwd(q, k, v, g, do, s0, gs, 0.5, False, False, 1, 16, bwd="Split")
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "bwd=fused,maxnreg=0")
    K._config_from_env()
    assert K.CONFIG["maxnreg"] == 0
    with pytest.raises(ValueError, match="maxnreg must be 'auto', 0"):
        K.gla_fwd(q, k, v, g, 0.5, False, False, 1, 16, maxnreg=300)
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "maxnreg=auto")
    K._config_from_env()
    assert K.CONFIG["maxnreg"] == "auto"
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "prefetch=1")
    K._config_from_env()
    assert K.CONFIG["prefetch"] == 1
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "prefetch=yes")
    with pytest.raises(ValueError):
        K._config_from_env()
    monkeypatch.setenv("GLADIFF_GLA_TRITON", "prefetch=2")
    with pytest.raises(ValueError, match="prefetch must be 'auto', 0 or 1"):
        K._config_from_env()


def test_backward_prefetches_only_without_register_cap():
    """"auto": the backward's prefetched tiles spill under the cap (measured slower there, faster
    without it at every shape); 0 / 1 force it either way."""
    assert K.resolve_prefetch("auto", 0) is True
    assert K.resolve_prefetch("auto", 168) is False
    assert K.resolve_prefetch(1, 168) is True and K.resolve_prefetch(0, 0) is False


def test_register_cap_auto_only_where_occupancy_is_needed(monkeypatch):
    """"auto" caps a 4-warp launch on a GPU only when its programs outnumber what the SMs hold
    uncapped (2 each): (32,6,256) has 192 programs on 132 SMs (cap measured slower), (32,18,256) 576."""
    monkeypatch.setattr(K, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    assert K.resolve_maxnreg("auto", 192, 4, gpu) == 0
    assert K.resolve_maxnreg("auto", 576, 4, gpu) == K.AUTO_MAXNREG == 168
    assert K.resolve_maxnreg("auto", 265, 4, gpu) == 168 and K.resolve_maxnreg("auto", 264, 4, gpu) == 0
    assert K.resolve_maxnreg("auto", 576, 8, gpu) == 0  # measured at 4 warps only
    assert K.resolve_maxnreg("auto", None, 4, gpu) == 0  # the parallel kernels: not measured
    assert K.resolve_maxnreg("auto", 576, 4, torch.device("cpu")) == 0  # the interpreter
    assert K.resolve_maxnreg(128, 10, 8, torch.device("cpu")) == 128  # an explicit cap stays


def test_dispatcher_rules():
    assert resolve_backend("triton", "cpu", torch.float32) == "triton"  # interpreter is on here
    with pytest.raises(ValueError, match="float64"):
        resolve_backend("triton", "cpu", torch.float64)
    assert resolve_backend("auto", "cpu", torch.float32) == "chunk"  # the interpreter is never "auto"


def test_segment_plan_fills_the_gpu_and_covers_the_sequence():
    for bh, T in [(192, 256), (6, 16384), (24, 16384), (1, 37), (576, 256)]:
        seg, nseg = K.plan_segments(bh, T)
        assert seg % K.CONFIG["chunk"] == 0 and (nseg - 1) * seg < T <= nseg * seg
        assert bh * nseg >= min(K.TARGET_PROGRAMS, bh * max(1, T // K.MIN_SEGMENT)) or nseg == 1


@pytest.mark.parametrize("bwd", BWDS)
def test_bf16_inputs_float32_gates(bwd):
    """DiG's call: bf16 q/k/v, float32 log-gates, bf16 score products (``dot="bf16-scores"``, the
    default). Outputs in bf16 precision; dg keeps float32's (it is a difference of two sums that
    cancel, so it must not be formed from 16-bit parts: the split backward hands q * dq from one
    launch to the next in float32)."""
    grid = (8, 8)
    q, k, v, g, do = make_inputs(1, 64, 2, 32, 64)
    q, k, v, do = (x.bfloat16() for x in (q, k, v, do))
    kw = dict(dot="bf16-scores", bwd=bwd)
    o, s0, gs = K.gla_fwd(q, k, v, g, 32 ** -0.5, False, True, *grid, dot="bf16-scores")
    grads = K.gla_bwd(q, k, v, g, do, s0, gs, 32 ** -0.5, False, True, *grid, **kw)
    ref = reference(q.float(), k.float(), v.float(), g, do.float(), 32 ** -0.5, "row", True, grid)
    assert o.dtype == torch.bfloat16 and grads[3].dtype == torch.float32
    for name, a, r in zip(["o", "dq", "dk", "dv"], [o, *grads[:3]], ref[:4]):
        assert rel(a, r) < 1e-2, name
    assert rel(grads[3], ref[4]) < 1e-4


def test_onepass_writes_dg_in_the_gates_dtype():
    """The one-pass backward keeps q * dq in registers, so it stores dg straight in the gates' dtype
    (no float32 scratch to convert): bf16 gates give the fused backward's bf16 dg."""
    grid = (6, 8)
    q, k, v, g, do = (x.bfloat16() for x in make_inputs(1, 48, 2, 16, 16))
    o, s0, gs = K.gla_fwd(q, k, v, g, 0.25, False, False, *grid)
    fused, onepass = (K.gla_bwd(q, k, v, g, do, s0, gs, 0.25, False, False, *grid, bwd=bwd)
                      for bwd in ("fused", "onepass"))
    for a, r in zip(onepass, fused):
        assert a.dtype == r.dtype and rel(a, r.double()) < 1e-2


@pytest.mark.parametrize("bwd", BWDS)
@pytest.mark.parametrize("chunk,dot", [(16, "tf32"), (16, "bf16-scores"), (32, "bf16")])
def test_launch_variants_match_recurrent(chunk, dot, bwd):
    """Other chunk sizes (tree depths) and bf16 operands compute the same function (one chunk per
    segment: the state crosses every chunk boundary through the saved segment starts)."""
    grid = (6, 8)
    q, k, v, g, do = make_inputs(1, 48, 1, 16, 16)
    q, k, v, do = (x.bfloat16() for x in (q, k, v, do)) if dot != "tf32" else (q, k, v, do)
    kw = dict(segment=chunk, chunk=chunk, dot=dot)
    o, s0, gs = K.gla_fwd(q, k, v, g, 0.25, True, False, *grid, **kw)
    grads = K.gla_bwd(q, k, v, g, do, s0, gs, 0.25, True, False, *grid, bwd=bwd, **kw)
    ref = reference(q.float(), k.float(), v.float(), g, do.float(), 0.25, "col", False, grid)
    tol = 2e-2 if dot != "tf32" else 1e-5
    for name, a, r in zip(["o", "dq", "dk", "dv", "dg"], [o, *grads], ref):
        assert rel(a, r) < tol, name


def test_whole_dig_compiles_in_one_graph():
    """A (tiny) DiG with the Triton backend, all four scan orders, traced by torch.compile with
    fullgraph=True (any graph break raises): the training step's output and every parameter gradient
    equal the eager network on the exact recurrence (``backend="recurrent"``). The weights are random
    (a fresh model's adaLN-Zero gates would hide the token mixer entirely) and the 6 x 8 grid's 48
    tokens span two chunks of 32, so the carried state is used."""
    from gladiff.models import create_model

    torch.manual_seed(0)
    model = create_model("DiG-S/2", input_size=(12, 16), in_channels=1, num_classes=10, depth=4,
                         hidden_size=64, num_heads=2, gla_backend="triton")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    x, t, y = torch.randn(2, 1, 12, 16), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    model.eval()  # no label dropout: both passes see the same labels

    def step(net):
        model.zero_grad()
        out = net(x, t, y)
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]

    got = step(torch.compile(model, backend="aot_eager", fullgraph=True))
    model.set_gla_backend("recurrent")
    ref = step(model)
    names = ["out"] + [n for n, p in model.named_parameters() if p.requires_grad]
    assert ref[0].abs().max() > 1e-2 and ref[names.index("blocks.0.attn.q_proj.weight")].abs().max() > 1e-4
    for name, a, r in zip(names, got, ref):
        assert torch.isfinite(a).all(), name
        err = rel(a, r.double())
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("impl", ["sequential", "parallel"])
def test_minus_inf_gates_forget_everything_as_in_recurrent(impl):
    """-inf log-gates (a legitimate "forget everything"): the kernels floor them at -1e4, whose decay
    is exactly 0 in float32, so differences of cumulative sums stay finite (-inf - -inf would be NaN);
    output and every gradient match the recurrence, within the float32 precision of cumulative sums
    near -1e4 (as for gates of -1e4 above)."""
    from gladiff.ops.gla import triton_impl

    q, k, v, g, do = make_inputs(1, 255, 2, 8, 12)
    g[:, 4, :, 0] = g[:, 17] = float("-inf")
    g[:, 40:60, 1, 3] = float("-inf")  # a run of them, across a chunk boundary
    xs = [x.clone().requires_grad_(True) for x in (q, k, v, g)]
    with triton_impl(impl):
        o = gla(*xs, scan="col", reverse=True, grid=(15, 17), backend="triton")
        out = [o.detach()] + list(torch.autograd.grad(o, xs, do))
    assert_close_all(out, reference(q, k, v, g, do, 8 ** -0.5, "col", True, (15, 17)), 1e-3)


def test_minus_inf_gates_are_refused_where_unsupported():
    """A backend whose kernels would return NaN for -inf gates (fla, unmeasured) is refused by name."""
    from gladiff.ops.gla import _check_gate_values

    g = torch.zeros(1, 4, 1, 2)
    g[0, 1, 0, 0] = float("-inf")
    _check_gate_values(g, "triton")  # accepted
    with pytest.raises(ValueError, match="does not support.*'chunk' or 'recurrent'"):
        _check_gate_values(g, "fla")
