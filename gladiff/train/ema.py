"""Exponential moving average of the weights (the model that is sampled from)."""
from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step.

    ``self.model`` is a frozen copy of the network in eval mode; buffers are copied, not averaged.
    The average is kept in float32 whatever precision the forward pass runs in.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights (same architecture, unwrapped)."""
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        # lerp(ema, src, 1 - decay) == decay * ema + (1 - decay) * src, in one fused pass.
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
