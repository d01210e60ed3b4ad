"""Mixed precision: autocast for the forward pass, loss scaling for fp16, clipping, the optimizer step."""
from __future__ import annotations

import contextlib

import torch

from .config import PRECISIONS


def resolve_precision(name: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on a CUDA device that supports it, else ``"fp32"``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def set_tf32(enabled: bool) -> None:
    """Allow TF32 tensor cores for float32 matmuls and convolutions (Ampere and newer GPUs)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


class Precision:
    """One training precision on one device.

    ``autocast()`` wraps the forward pass (bf16/fp16 compute, float32 weights);
    ``backward(loss)`` scales the loss for fp16 so small gradients do not flush to zero;
    ``step(optimizer, params, max_norm, measure_norm)`` unscales, clips, steps and returns the global
    grad norm (fp16 steps whose gradients overflowed are skipped by the scaler, which then lowers the
    scale); without clipping the norm is only computed when ``measure_norm`` (``None`` otherwise).
    """

    def __init__(self, name: str, device: torch.device):
        self.name = resolve_precision(name, device)
        self.device = device
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, max_norm: float = 0.0,
             measure_norm: bool = True) -> torch.Tensor | None:
        params = [p for p in params if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = None
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        elif measure_norm:  # max_norm == 0 means "no clipping": measure without rescaling (a pass fewer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
