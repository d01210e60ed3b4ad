"""Faster sampling passes: the denoiser under ``torch.compile`` and/or replayed from CUDA graphs.

A sampler calls ``model(x, t, y)`` once or twice per step with the same shapes every time, so the
whole network pass can be captured once into a CUDA graph and replayed: the CPU then launches one
graph instead of hundreds of kernels per step, which is what limits small batches and DiG's many
small kernels. The sampler's own arithmetic (a few element-wise ops per step) stays eager.
"""
from __future__ import annotations

import torch

from gladiff.models import check_compile_scope, compile_model

EXECUTIONS = ("eager", "compile", "graph", "compile+graph")
# The torch.compile backend of the compiled executions: torch.compile's default. Tests set "aot_eager"
# (no code generation) so that the compiled path runs in seconds on a CPU; not a user-facing option.
COMPILE_BACKEND = "inductor"


class GraphedModel:
    """Callable ``model(x, t, y)`` replayed from CUDA graphs, one graph per input signature.

    The first call with new shapes / dtypes / autocast state warms the model up on a side stream and
    captures it; later calls copy the inputs into the graph's static buffers, replay it and return a
    copy of its output. Graphs share one memory pool. Inference only (call under ``torch.no_grad``).
    """

    def __init__(self, model, warmup: int = 2):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.model, self.warmup = model, warmup
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def __getattr__(self, name):  # in_channels, null_label, ...: the wrapped model's attributes
        if name in ("model", "warmup", "graphs", "pool"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @staticmethod
    def _signature(args) -> tuple:
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        return key + (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))

    def _capture(self, args):
        if torch.is_grad_enabled():
            raise RuntimeError("GraphedModel replays inference passes only: call it under torch.no_grad()")
        static = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.model(*static)
        torch.cuda.current_stream().wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model(*static)
        return static, out, graph

    def __call__(self, x, t, y):
        args = (x, t, y)
        if any(not isinstance(a, torch.Tensor) or a.device.type != "cuda" for a in args):
            raise ValueError("GraphedModel needs CUDA tensors x, t, y (CUDA graphs run on the GPU only)")
        key = self._signature(args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        static, out, graph = self.graphs[key]
        for buffer, a in zip(static, args):
            buffer.copy_(a)
        graph.replay()
        return out.clone()


def for_sampling(model, execution: str = "eager", device: torch.device | str = "cpu",
                 compile_scope: str = "model"):
    """``model`` wrapped for sampling passes: ``"eager"`` (as is), ``"compile"`` (``torch.compile``),
    ``"graph"`` (CUDA-graph replays) or ``"compile+graph"``. Graphs need a CUDA ``device``.

    ``compile_scope`` (the compiled executions; ``gladiff.models.compile_model``): ``"model"`` compiles
    the whole network into one graph (fuses across blocks; compile time grows with depth), ``"blocks"``
    compiles each of ``model.blocks`` in place, which changes ``model`` itself until
    ``gladiff.models.uncompile_blocks(model)`` (``sample_images`` does that when it is done)."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; choose from {EXECUTIONS}")
    check_compile_scope(compile_scope)
    if "graph" in execution and torch.device(device).type != "cuda":
        raise ValueError(f"execution {execution!r} uses CUDA graphs and needs a CUDA device, got {device}")
    if "compile" in execution:
        model = compile_model(model, compile_scope, backend=COMPILE_BACKEND)
    if "graph" in execution:
        model = GraphedModel(model)
    return model
