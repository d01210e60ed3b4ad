"""Whole-model compile of DiG recomputes each block's tagged element-wise regions near that block's
backward, not all of them at the start of the backward (docs/performance.md, "Whole-model compile
hoists recomputation").

The GLA runs as our Triton custom op (Triton's CPU interpreter), the path the GPU takes: with it,
Inductor's peak-memory pass pulls every block's recomputation to the front of the backward, which
``compile_model`` now turns off. Skipped when Triton is not installed."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' import

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
from torch._inductor import config as inductor_config  # noqa: E402
from torch._inductor.scheduler import Scheduler  # noqa: E402
from torch._inductor.virtualized import V  # noqa: E402

from gladiff.models import compile_model, create_model  # noqa: E402
from gladiff.models.compiled import tags_recomputation  # noqa: E402
from gladiff.ops.gla import triton_chunk as K  # noqa: E402

if not K._INTERPRET:
    pytest.skip("the Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)

DEPTH = 3


def _block_of(fx_node):
    """Index of the DiG block an FX node of the compiled graph came from, or None."""
    stack = fx_node.meta.get("nn_module_stack") or fx_node.meta.get("fwd_nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    path = path.replace("L['self'].", "")
    return int(path.split(".")[1]) if path.startswith("blocks.") else None


def _kernel_blocks(snode):
    """(blocks whose tagged recomputation this scheduled kernel computes, blocks whose other work it does)."""
    recompute, other = set(), set()
    for sub in snode.get_nodes():
        for origin in (sub.node.origins if sub.node is not None else ()):
            block = _block_of(origin)
            if block is not None:
                (recompute if origin.meta.get("recompute") is not None else other).add(block)
    return recompute, other - recompute


@pytest.fixture
def backward_schedule(monkeypatch):
    """Records the final kernel order of every backward graph Inductor generates code for."""
    seen = []
    codegen = Scheduler.codegen

    def spy(self):
        if V.graph.is_backward:
            seen.append([_kernel_blocks(n) for n in self.nodes])
        return codegen(self)

    monkeypatch.setattr(Scheduler, "codegen", spy)
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cache hit would skip the scheduler
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    return seen


def hoisted_blocks(schedule):
    """Blocks ``b`` whose recomputation is scheduled before the first kernel of block ``b + 1``'s own
    backward (which runs before block ``b``'s): recomputation hoisted out of its block."""
    def first(kind, block):
        return min((i for i, kinds in enumerate(schedule) if block in kinds[kind]), default=None)

    out = []
    for b in range(DEPTH - 1):
        rc, later = first(0, b), first(1, b + 1)
        assert rc is not None and later is not None, "the backward lost a block's recomputation"
        if rc < later:
            out.append(b)
    return out


def test_whole_model_compile_recomputes_each_block_near_its_backward(backward_schedule):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("DiG-S/2", input_size=8, in_channels=1, num_classes=10, depth=DEPTH,
                         hidden_size=32, num_heads=2, gla_backend="triton")
    assert tags_recomputation(model)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    ref_out = model(x, t, y)
    ref_out.square().mean().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad()

    out = compile_model(model, "model")(x, t, y)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(params, ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)

    assert len(backward_schedule) == 1, "expected one whole-model backward graph"
    assert hoisted_blocks(backward_schedule[0]) == []
    torch._dynamo.reset()
