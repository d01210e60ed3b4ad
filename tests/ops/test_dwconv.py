"""SREM's depth-wise 3x3 conv on tokens against F.conv2d on a physically permuted NCHW image in
float64: output and the three gradients, for both backends (our Triton kernels under Triton's CPU
interpreter, TRITON_INTERPRET=1), non-square and degenerate grids, channel counts that are not a
multiple of the tile, oriented (transposed / flipped) kernels, no bias, bf16, strided tokens,
several backward splits, torch.compile and autocast. Triton cases fail without Triton
(GLADIFF_TEST_WITHOUT_TRITON=1: skipped; triton_check.py)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from triton_check import import_kernels

K, TRITON_PROBLEM = import_kernels("dwconv_triton")  # sets TRITON_INTERPRET=1 before the kernels' import

from gladiff.ops import dwconv3x3  # noqa: E402
from gladiff.ops.dwconv import resolve_backend  # noqa: E402

needs_triton = pytest.mark.needs_triton(problem=TRITON_PROBLEM)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def reference(x, weight, bias, dy, grid):
    """F.conv2d on the image laid out NCHW by a real transpose copy, in float64: ``[y, dx, dw, db]``."""
    B, T, D = x.shape
    xs = [t.detach().double().requires_grad_(True) for t in (x, weight)]
    b = bias.detach().double().requires_grad_(True) if bias is not None else None
    img = xs[0].transpose(1, 2).reshape(B, D, *grid)
    y = F.conv2d(img, xs[1], b, padding=1, groups=D).flatten(2).transpose(1, 2)
    grads = torch.autograd.grad(y, xs + ([b] if b is not None else []), dy.double())
    return [y.detach(), *grads] + ([] if b is not None else [None])


def run(x, weight, bias, dy, grid, backend):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight)]
    b = bias.detach().clone().requires_grad_(True) if bias is not None else None
    y = dwconv3x3(leaves[0], leaves[1], b, grid, backend=backend)
    y.backward(dy)
    return [y.detach(), leaves[0].grad, leaves[1].grad, None if b is None else b.grad]


def rel(a, r):
    return (torch.linalg.vector_norm(a.double() - r) / torch.linalg.vector_norm(r)).item()


def assert_close_all(out, ref, tol, dtype=None):
    for name, a, r in zip(["y", "dx", "dweight", "dbias"], out, ref):
        if r is None:
            assert a is None, f"{name} should be None"
            continue
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        if dtype is not None:
            assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = rel(a, r)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol}"


def oriented(weight, transpose, rot180):
    """The kernel as DiGBlock.conv_weight() orients it: a transposed view and/or a 180-degree flip."""
    if transpose:
        weight = weight.transpose(-1, -2)
    if rot180:
        weight = weight.flip(-1, -2)
    return weight


def make(B, grid, D, dtype=torch.float32, bias=True):
    T = grid[0] * grid[1]
    x = torch.randn(B, T, D, dtype=dtype)
    weight = torch.randn(D, 1, 3, 3, dtype=dtype)
    b = torch.randn(D, dtype=dtype) if bias else None
    return x, weight, b, torch.randn(B, T, D, dtype=dtype)


CASES = [  # (B, grid, D, transpose, rot180, bias)
    (2, (3, 5), 70, False, False, True),
    (1, (1, 9), 5, True, False, True),
    (2, (7, 1), 33, False, True, False),
    (1, (4, 4), 130, True, True, True),
    (3, (5, 3), 16, False, False, False),
    (1, (1, 1), 3, False, False, True),
]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("B,grid,D,transpose,rot180,bias", CASES)
def test_matches_conv2d(backend, B, grid, D, transpose, rot180, bias):
    torch.manual_seed(D)
    x, weight, b, dy = make(B, grid, D, bias=bias)
    w = oriented(weight, transpose, rot180)
    assert_close_all(run(x, w, b, dy, grid, backend), reference(x, w, b, dy, grid), 1e-5, torch.float32)


def test_torch_backend_is_exact_in_float64():
    torch.manual_seed(0)
    x, weight, b, dy = make(2, (3, 5), 7, dtype=torch.float64)
    assert_close_all(run(x, weight, b, dy, (3, 5), "torch"), reference(x, weight, b, dy, (3, 5)), 1e-12,
                     torch.float64)


@needs_triton
def test_bf16_keeps_dtypes_and_bf16_accuracy():
    torch.manual_seed(1)
    x, weight, b, dy = make(2, (4, 6), 40, dtype=torch.bfloat16)
    w = oriented(weight, True, True)
    assert_close_all(run(x, w, b, dy, (4, 6), "triton"), reference(x, w, b, dy, (4, 6)), 1e-2, torch.bfloat16)


@needs_triton
def test_strided_tokens():
    """Tokens with a token stride that is not D (a slice of a wider tensor) and a batch stride that
    is not T*D (every other image) are read in place."""
    torch.manual_seed(2)
    grid, D = (3, 4), 20
    wide = torch.randn(4, 12, 2 * D)
    x = wide[::2, :, 5:5 + D]
    assert x.stride() == (2 * 12 * 2 * D, 2 * D, 1)
    _, weight, b, dy = make(2, grid, D)
    assert_close_all(run(x, weight, b, dy, grid, "triton"), reference(x, weight, b, dy, grid), 1e-5)
    # and an output gradient that is not contiguous (expanded along the tokens)
    dy = torch.randn(2, 1, D).expand(2, 12, D)
    assert_close_all(run(x, weight, b, dy, grid, "triton"), reference(x, weight, b, dy, grid), 1e-5)


@needs_triton
@pytest.mark.parametrize("fused", [True, False])
def test_backward_splits_and_reduction_steps(fused):
    """Small tiles and a high program target: each image's tokens in several splits (a split ending
    inside a row), the partial-sum buffer longer than one reduction step; dx in the backward kernel
    (fused) or from the forward kernel with the rotated kernel; bitwise reproducible."""
    torch.manual_seed(3)
    grid, D = (5, 7), 16
    x, weight, b, dy = make(2, grid, D)
    kw = dict(block_t=8, block_d=16, reduce_p=4, target=10_000, fused=fused)
    split, nsplit = K.plan_splits(2, 35, D, 8, 16, 10_000)
    assert split == 8 and nsplit == 5  # 10 partial rows, summed in 3 steps of 4
    w9 = weight.reshape(D, 9).contiguous()
    dx, dw9, db = K.conv_bwd(dy, x, w9, *grid, **kw)
    ref = reference(x, weight, b, dy, grid)
    assert_close_all([ref[0].float(), dx, dw9.view(D, 1, 3, 3), db], ref, 1e-5)
    again = K.conv_bwd(dy, x, w9, *grid, **kw)
    assert all(torch.equal(a, c) for a, c in zip((dx, dw9, db), again))
    if fused:
        y = K.conv_fwd(x, w9, b, *grid, block_t=8, block_d=16)
        assert rel(y, ref[0]) < 1e-5


@needs_triton
def test_split_plan_covers_the_tokens():
    for B, T, D in [(32, 256, 1152), (32, 256, 384), (1, 16384, 384), (4, 16384, 384), (32, 1024, 1152), (2, 3, 5)]:
        split, nsplit = K.plan_splits(B, T, D)
        bt, bd = K.CONFIG["bwd_block_t"], K.CONFIG["bwd_block_d"]
        assert split % bt == 0 and (nsplit - 1) * split < T <= nsplit * split
        tiles_d = -(-D // bd)
        # enough programs (up to rounding of the split to whole tiles), where the tokens allow
        assert B * tiles_d * nsplit >= min(K.TARGET_PROGRAMS, B * tiles_d * -(-T // bt)) // 2


@needs_triton
def test_compiles_in_one_graph():
    """The custom op (fake impls + autograd) lets torch.compile(fullgraph=True) trace the op."""
    torch.manual_seed(4)
    grid, D = (3, 5), 12
    x, weight, b, dy = make(2, grid, D)
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, b)]

    def f(x, weight, b):
        return dwconv3x3(x * 2, oriented(weight, True, True), b, grid, backend="triton")

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves)
    y.backward(dy)
    ref = reference(x * 2, oriented(weight, True, True), b, dy, grid)
    ref[1] = ref[1] * 2  # chain rule through x * 2
    ref[2] = oriented(ref[2], True, True)  # the flip and transpose are their own inverses here
    assert_close_all([y.detach(), *(t.grad for t in leaves)], ref, 1e-5)


@needs_triton
def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) impls against the real outputs, autograd
    registration and AOT dispatch with dynamic shapes."""
    torch.manual_seed(7)
    x, weight, b, dy = make(2, (3, 4), 8)
    w9 = weight.reshape(8, 9)
    leaves = [t.clone().requires_grad_(True) for t in (x, w9, b)]
    torch.library.opcheck(K.dwconv3x3_fwd, (*leaves, 3, 4))
    torch.library.opcheck(K.dwconv3x3_fwd, (leaves[0], leaves[1], None, 3, 4),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(K.dwconv3x3_bwd, (dy, x, w9, 3, 4), test_utils=("test_schema", "test_faketensor"))


@needs_triton
def test_autocast_computes_what_conv2d_computes():
    """Under autocast F.conv2d runs in the autocast dtype; the Triton backend must do the same."""
    torch.manual_seed(5)
    x, weight, b, _ = make(1, (4, 4), 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = dwconv3x3(x, weight, b, (4, 4), backend="torch")
        out = dwconv3x3(x, weight, b, (4, 4), backend="triton")
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel(out, ref.double()) < 1e-2


@needs_triton
def test_dig_with_triton_conv_matches_torch_conv():
    """A tiny DiG (all four SREM orientations) gives the same output and gradients with either conv."""
    from gladiff.models import create_model

    torch.manual_seed(6)
    model = create_model("DiG-S/2", input_size=8, in_channels=1, num_classes=10, depth=4, hidden_size=32,
                         num_heads=2, gla_backend="chunk", dwconv_init="random", dwconv_backend="torch").eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    grads = []
    outs = []
    for backend in ("torch", "triton"):
        model.set_dwconv_backend(backend)
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    assert len(grads[0]) == len(grads[1])
    for g1, g0 in zip(grads[1], grads[0]):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    x, weight, b, _ = make(1, (3, 4), 6)
    with pytest.raises(ValueError, match="h \\* w == T"):
        dwconv3x3(x, weight, b, (3, 5))
    with pytest.raises(ValueError, match="grid must be"):
        dwconv3x3(x, weight, b, None)
    with pytest.raises(ValueError, match="weight must be"):
        dwconv3x3(x, weight[:5], b, (3, 4))
    with pytest.raises(ValueError, match="weight must be"):
        dwconv3x3(x, torch.randn(6, 1, 5, 5), b, (3, 4))
    with pytest.raises(ValueError, match="bias must be"):
        dwconv3x3(x, weight, b[:4], (3, 4))
    with pytest.raises(ValueError, match=r"x must be \[B, T, D\]"):
        dwconv3x3(x[0], weight, b, (3, 4))
    with pytest.raises(ValueError, match="unknown dwconv backend"):
        dwconv3x3(x, weight, b, (3, 4), backend="cudnn")
    from gladiff.models import create_model
    with pytest.raises(ValueError, match="dwconv_backend"):
        create_model("DiG-S/2", input_size=8, depth=1, hidden_size=32, num_heads=2, dwconv_backend="cudnn")


@needs_triton
def test_triton_rules():
    x, weight, b, _ = make(1, (3, 4), 6)
    with pytest.raises(ValueError, match="share a dtype"):
        dwconv3x3(x, weight.double(), b, (3, 4), backend="triton")
    with pytest.raises(ValueError, match="float64"):
        dwconv3x3(x.double(), weight.double(), b.double(), (3, 4), backend="triton")
    assert resolve_backend("auto", "cpu", torch.float32) == "torch"  # the interpreter is never "auto"
    assert resolve_backend("triton", "cpu", torch.bfloat16) == "triton"


def test_importing_gladiff_does_not_import_triton():
    code = ("import sys, gladiff, gladiff.models, gladiff.ops; import torch; from gladiff.ops import dwconv3x3; "
            "x = torch.randn(1, 4, 3); dwconv3x3(x, torch.randn(3, 1, 3, 3), None, (2, 2)); "
            "print('triton' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
