"""Faster sampling passes: the denoiser under ``torch.compile`` and/or replayed from CUDA graphs.

A sampler calls ``model(x, t, y)`` once or twice per step with the same shapes every time, so the
whole network pass can be captured once into a CUDA graph and replayed: the CPU then launches one
graph instead of hundreds of kernels per step, which is what limits small batches and DiG's many
small kernels. The sampler's own arithmetic (a few element-wise ops per step) stays eager.

Both are specialised to a batch shape, so a ragged last batch would compile and capture a second
time: ``PadBatch`` pads it to the full batch instead (the padded rows are computed and dropped; the
sampler, and so the noise of every real sample, never sees them).
"""
from __future__ import annotations

import torch

from gladiff.models import check_compile_scope, compile_model

EXECUTIONS = ("eager", "compile", "graph", "compile+graph")
# What `gladiff sample --execution` accepts: "auto" picks one of EXECUTIONS (gladiff.sample.auto).
EXECUTION_CHOICES = ("auto", *EXECUTIONS)
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


class PadBatch:
    """Callable ``model(x, t, y)`` that runs every call at the largest batch it has seen so far.

    A smaller call (a ragged last batch: on every rank the full batches come first) is padded with
    copies of its last row to that batch, run, and cut back: the caller gets exactly its own rows, so
    a compiled or graphed ``model`` sees one shape and neither recompiles nor captures again. Rows do
    not interact in DiG and DiT (no batch statistics at inference), so the real rows are what an
    unpadded call gives, to floating-point rounding (another batch size may pick other GEMM kernels).
    """

    def __init__(self, model, batch: int = 0):
        self.model, self.batch = model, int(batch)

    def __getattr__(self, name):  # in_channels, null_label, ...: the wrapped model's attributes
        if name in ("model", "batch"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, x, t, y):
        n = x.shape[0]
        if n >= self.batch:
            self.batch = n
            return self.model(x, t, y)
        pad = self.batch - n
        grow = lambda a: torch.cat([a, a[-1:].expand(pad, *a.shape[1:])])  # noqa: E731
        return self.model(grow(x), grow(t), grow(y))[:n]


def resolve_execution(execution: str, device: torch.device | str) -> str:
    """``"auto"`` stays ``"auto"`` on a CUDA device (``gladiff.sample.auto`` decides while sampling)
    and is ``"eager"`` anywhere else; any other value is checked and returned."""
    if execution not in EXECUTION_CHOICES:
        raise ValueError(f"unknown execution {execution!r}; choose from {EXECUTION_CHOICES}")
    if execution == "auto" and torch.device(device).type != "cuda":
        return "eager"
    return execution


def for_sampling(model, execution: str = "eager", device: torch.device | str = "cpu",
                 compile_scope: str = "model"):
    """``model`` wrapped for sampling passes: ``"eager"`` (as is), ``"compile"`` (``torch.compile``),
    ``"graph"`` (CUDA-graph replays) or ``"compile+graph"``, the last three inside ``PadBatch``
    (one batch shape: a ragged last batch neither recompiles nor captures again). Graphs need a
    CUDA ``device``.

    ``compile_scope`` (the compiled executions; ``gladiff.models.compile_model``): ``"model"`` compiles
    the whole network into one graph (fuses across blocks; compile time grows with depth), ``"blocks"``
    compiles each of ``model.blocks`` in place, which changes ``model`` itself until
    ``gladiff.models.uncompile_blocks(model)`` (``sample_images`` does that when it is done)."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; choose from {EXECUTIONS}")
    check_compile_scope(compile_scope)
    if "graph" in execution and torch.device(device).type != "cuda":
        raise ValueError(f"execution {execution!r} uses CUDA graphs and needs a CUDA device, got {device}")
    if execution == "eager":
        return model
    if "compile" in execution:
        model = compile_model(model, compile_scope, backend=COMPILE_BACKEND)
    if "graph" in execution:
        model = GraphedModel(model)
    return PadBatch(model)
