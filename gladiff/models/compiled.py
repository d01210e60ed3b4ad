"""``torch.compile`` for DiG and DiT, over the whole network or block by block.

* ``"model"``: ``torch.compile(model)``: one graph for the whole network. Compile time grows with
  depth (DiG-XL/2: about 100 s on an H200 for a training step).
* ``"blocks"`` (regional compilation): every block is compiled in place, the embeddings and the final
  layer stay eager. Blocks of one family share their code, so ``torch.compile`` traces one graph per
  distinct block and reuses it: one for DiT, one per SREM orientation for DiG (four), however deep the
  model. The price is that nothing fuses across block boundaries.

Both compute the same function as the eager model (to floating-point reassociation in the fused
kernels).
"""
from __future__ import annotations

import torch
from torch import nn

COMPILE_SCOPES = ("model", "blocks")


def check_compile_scope(scope: str) -> None:
    """ValueError unless ``scope`` is one of ``COMPILE_SCOPES``."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"unknown compile scope {scope!r}; choose from {COMPILE_SCOPES}")


def compile_model(model: nn.Module, scope: str = "model", **compile_kwargs) -> nn.Module:
    """The model to call: ``torch.compile(model, **compile_kwargs)`` for ``scope="model"``; for
    ``"blocks"``, ``model`` itself with each of ``model.blocks`` compiled in place (undo with
    :func:`uncompile_blocks`)."""
    check_compile_scope(scope)
    if scope == "model":
        return torch.compile(model, **compile_kwargs)
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"scope='blocks' needs a model with a non-empty `blocks` ModuleList; "
                         f"{type(model).__name__} has none")
    for block in blocks:
        block.compile(**compile_kwargs)
    return model


def uncompile_blocks(model: nn.Module) -> nn.Module:
    """Undo ``compile_model(model, "blocks")``: the blocks run eagerly again. Returns ``model``."""
    for block in getattr(model, "blocks", ()):
        block._compiled_call_impl = None  # what nn.Module.compile sets; None means eager
    return model
