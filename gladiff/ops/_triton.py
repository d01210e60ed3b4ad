"""What every Triton-backed operator needs, without importing Triton: whether Triton can run on a
device, and (imported lazily by the kernel modules) a fix for the CPU interpreter used by the tests."""
from __future__ import annotations

import importlib.util
import os

import torch

# Looked up once: dispatchers must stay cheap and traceable by torch.compile.
HAS_TRITON = importlib.util.find_spec("triton") is not None
# Input dtypes our Triton kernels take (they accumulate in float32).
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available(device: torch.device) -> bool:
    """Whether Triton kernels can run on ``device``: CUDA, or the CPU under ``TRITON_INTERPRET=1``."""
    if not HAS_TRITON:
        return False
    # On the CPU the kernels run only under Triton's interpreter (tests).
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def check_triton_backend(op: str, device: torch.device, dtype: torch.dtype | None, fallback: str) -> None:
    """Raise a ValueError naming ``op`` when its ``"triton"`` backend cannot run on ``device`` or
    take ``dtype``; ``fallback`` names the backends to use instead for float64."""
    if not triton_available(device):
        raise ValueError(f"{op} backend='triton' needs Triton and a CUDA device (or TRITON_INTERPRET=1 "
                         "for Triton's CPU interpreter)")
    if dtype is not None and dtype not in TRITON_DTYPES:
        raise ValueError(f"{op} backend='triton' takes float32, bfloat16 or float16 inputs, got {dtype}; "
                         f"use {fallback} for float64")


def fix_interpreter_index() -> None:
    """Triton 3.6's CPU interpreter turns a scalar into ``int`` with ``int(array_of_shape_1)``, which
    NumPy >= 2.4 refuses; every loop with a run-time bound then fails. Patch that one conversion
    (idempotent; call it only when the kernels were decorated under ``TRITON_INTERPRET=1``)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_gladiff_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._gladiff_fixed = True
    interpreter._patch_lang_tensor = patched
