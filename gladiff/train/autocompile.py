"""``--compile auto``: train eagerly, or compile the blocks once the run is known to pay it back.

On a CPU (and any non-CUDA device) ``auto`` is ``none``. On a GPU the run starts eagerly;
``WARMUP_STEPS`` steps later it times ``TIMED_STEPS`` steps (one synchronisation at each end), and
``gladiff.models.payback.choose`` compares, for the steps still to run, eager against compiling each
block in place (``gladiff.models.compile_model(model, "blocks")``, the scope whose compile time does
not grow with depth) with the model's measured speed-up and compile time. Rank 0 decides for every
rank; the decision is logged once. Compiling mid-run changes nothing that is saved (the optimizer,
the EMA and checkpoints use the same parameters), as with ``--compile blocks`` from the start.
"""
from __future__ import annotations

import time

import torch

from gladiff.models import compile_model
from gladiff.models.payback import Payback, choose, explain

from . import parallel

WARMUP_STEPS = 3  # eager steps before timing: allocator, cuDNN/Triton autotuning, lazy optimizer state
TIMED_STEPS = 5  # eager steps timed for the decision


def resolve_compile(compile: str, device: torch.device) -> str:
    """``"auto"`` stays ``"auto"`` on a CUDA device and is ``"none"`` elsewhere; other values pass."""
    return "none" if compile == "auto" and device.type != "cuda" else compile


class AutoCompile:
    """Call ``after_step(step)`` after every optimizer step (``step`` = steps done). Inactive (no
    timing, no synchronisation) unless ``options`` holds a ``"blocks"`` payback and ``model`` has
    blocks to compile. ``clock`` gives seconds (tests pass a fake one); ``message`` logs the decision;
    ``self.choice`` is ``None`` until decided, then ``"eager"`` or ``"blocks"``."""

    def __init__(self, model: torch.nn.Module, dist: parallel.Dist, options: dict[str, Payback],
                 start_step: int, total_steps: int, message=print, clock=time.perf_counter):
        self.model, self.dist, self.message, self.clock = model, dist, message, clock
        self.options = {k: v for k, v in options.items() if k == "blocks"}
        self.total = total_steps
        self.start_timing = start_step + WARMUP_STEPS
        self.decide_at = self.start_timing + TIMED_STEPS
        blocks = getattr(model, "blocks", None)
        usable = self.options and isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0
        self.choice = None if usable and self.decide_at < total_steps else "eager"
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)

    def after_step(self, step: int) -> None:
        if self.choice is not None:
            return
        if step == self.start_timing:
            self._sync()
            self._t0 = self.clock()
        elif step == self.decide_at:
            self._sync()
            per_step = (self.clock() - self._t0) / TIMED_STEPS
            left = self.total - step
            choice = choose(left, per_step, self.options)
            self.choice = parallel.broadcast_object(self.dist, choice)  # every rank as rank 0 says
            self.message(explain("--compile", self.choice, left, per_step, self.options))
            if self.choice == "blocks":
                compile_model(self.model, "blocks", backend=parallel.COMPILE_BACKEND)
