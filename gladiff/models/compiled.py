"""``torch.compile`` for DiG and DiT, over the whole network or block by block.

* ``"model"``: ``torch.compile(model)``: one graph for the whole network. Compile time grows with
  depth (DiG-XL/2: about 100 s on an H200 for a training step).
* ``"blocks"`` (regional compilation): every block is compiled in place, the embeddings and the final
  layer stay eager. Blocks of one family share their code, so ``torch.compile`` traces one graph per
  distinct block and reuses it: one for DiT, one per SREM orientation for DiG (four), however deep the
  model. The price is that nothing fuses across block boundaries.

Both compute the same function as the eager model (to floating-point reassociation in the fused
kernels).

Whole-model compile of a model that tags element-wise regions for recomputation (DiG's
``recompute_elementwise``) turns off Inductor's peak-memory reordering pass
(``reorder_for_peak_memory``). In one backward graph for the whole network the recomputed regions
depend only on saved activations, so they are ready from the first kernel on; the pass's greedy
order (LPMF) pulls every block's recomputation to the start of the backward, where all of them stay
live together (DiG-S/2 2048 px batch 4 on an H100: ten 128 MB SwiGLU products live at the 12.7 GB
peak). Without the pass the backward keeps AOTAutograd's order, which recomputes each block's
region just before that block's backward uses it. ``docs/performance.md`` ("Whole-model compile
hoists recomputation") has the evidence. Set ``GLADIFF_INDUCTOR_PEAK_REORDER=1`` to keep the pass
(to compare on a GPU), or pass ``options``/``mode`` yourself (then nothing is changed).
"""
from __future__ import annotations

import os

import torch
from torch import nn

COMPILE_SCOPES = ("model", "blocks")


def _check_scope(scope: str) -> None:
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {COMPILE_SCOPES}, got {scope!r}")


def compile_model(model: nn.Module, scope: str = "model", **compile_kwargs) -> nn.Module:
    """The model to call: ``torch.compile(model, **compile_kwargs)`` for ``scope="model"``; for
    ``"blocks"``, ``model`` itself with each of ``model.blocks`` compiled in place (undo with
    :func:`uncompile_blocks`)."""
    _check_scope(scope)
    if scope == "model":
        return torch.compile(model, **_whole_model_kwargs(model, compile_kwargs))
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"scope='blocks' needs a model with a non-empty `blocks` ModuleList; "
                         f"{type(model).__name__} has none")
    for block in blocks:
        block.compile(**compile_kwargs)
    return model


def tags_recomputation(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` recomputes tagged element-wise regions in backward
    (a ``recompute_elementwise`` attribute set to True, as DiG's GLA and SwiGLU have)."""
    return any(getattr(m, "recompute_elementwise", False) for m in model.modules())


def _whole_model_kwargs(model: nn.Module, compile_kwargs: dict) -> dict:
    """``compile_kwargs`` plus ``options={"reorder_for_peak_memory": False}`` for a model with tagged
    recomputation (see the module docstring), unless the caller chose ``options`` or ``mode`` (which
    torch.compile does not accept together), the backend is not Inductor, or
    ``GLADIFF_INDUCTOR_PEAK_REORDER=1``."""
    backend = compile_kwargs.get("backend", "inductor")
    if (not tags_recomputation(model) or backend != "inductor" or "options" in compile_kwargs
            or "mode" in compile_kwargs or os.environ.get("GLADIFF_INDUCTOR_PEAK_REORDER") == "1"):
        return compile_kwargs
    return {**compile_kwargs, "options": {"reorder_for_peak_memory": False}}


def uncompile_blocks(model: nn.Module) -> nn.Module:
    """Undo ``compile_model(model, "blocks")``: the blocks run eagerly again. Returns ``model``."""
    for block in getattr(model, "blocks", ()):
        block._compiled_call_impl = None  # what nn.Module.compile sets; None means eager
    return model
