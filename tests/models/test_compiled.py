"""compile_model: whole-network and block-by-block (regional) compilation compute the eager function;
regional compilation traces one graph per distinct block, not one per block."""
import pytest
import torch

from gladiff.models import compile_model, create_model, uncompile_blocks


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _tiny(family, depth):
    kw = dict(gla_backend="chunk") if family == "DiG" else {}
    torch.manual_seed(0)
    model = create_model(f"{family}-S/2", input_size=8, in_channels=1, num_classes=10, depth=depth,
                         hidden_size=64, num_heads=2, **kw)
    return model.eval()  # no label dropout: eager and compiled see the same labels


@pytest.mark.parametrize("family,depth,graphs", [("DiG", 8, 4), ("DiT", 4, 1)])
def test_blocks_scope_matches_eager_with_one_graph_per_distinct_block(family, depth, graphs):
    torch._dynamo.reset()
    model = _tiny(family, depth)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    ref = model(x, t, y)
    backend = CountingBackend()
    out = compile_model(model, "blocks", backend=backend)(x, t, y)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # DiG: four SREM orientations -> four graphs for eight blocks; DiT: one graph for all blocks.
    assert backend.graphs == graphs
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.blocks.parameters() if p.requires_grad)
    uncompile_blocks(model)
    torch._dynamo.reset()
    model(x, t, y)
    assert backend.graphs == graphs  # eager again: nothing more traced


def test_model_scope_is_one_graph():
    torch._dynamo.reset()
    model = _tiny("DiT", 2)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    backend = CountingBackend()
    out = compile_model(model, "model", backend=backend)(x, t, y)
    torch.testing.assert_close(out, model(x, t, y), rtol=1e-5, atol=1e-6)
    assert backend.graphs == 1


def test_bad_scope_and_blockless_model():
    with pytest.raises(ValueError, match="compile scope"):
        compile_model(_tiny("DiT", 1), "layers")
    with pytest.raises(ValueError, match="blocks"):
        compile_model(torch.nn.Linear(2, 2), "blocks")
