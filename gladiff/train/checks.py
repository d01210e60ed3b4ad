"""What the loop checks between steps without waiting for the GPU: a non-finite loss, a stop request.

Reading a GPU value on the host (``loss.item()``) waits for every kernel queued so far, so a check
after every step would stop the CPU from loading and launching the next step while the GPU runs this
one. ``StepChecks`` keeps the losses as device tensors and reads them together every
``CHECK_EVERY`` steps, and always before the loop writes anything (a checkpoint, a sample grid, a
log line): a NaN is found at most that many steps late and never saved. Stop requests (SIGTERM,
Ctrl-C) are agreed between processes at the same checks (one all-reduce); a single process reacts
at the next step.
"""
from __future__ import annotations

import torch

from . import parallel
from .parallel import Dist

CHECK_EVERY = 10  # steps between host reads; at most this many steps run past a NaN or a signal


class StepChecks:
    """``record(step, loss)`` after every step (no synchronisation); ``poll(step, force)`` returns
    ``(first_bad, stopping)``: ``first_bad`` is ``(step, value)`` of the first non-finite loss
    recorded since the last poll that read the losses (``None`` if all were finite, or if nothing
    was read), ``stopping`` whether a stop was requested (on any process)."""

    def __init__(self, dist: Dist, stop, every: int = CHECK_EVERY):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.dist, self.stop, self.every = dist, stop, every
        self._pending: list[tuple[int, torch.Tensor]] = []

    def record(self, step: int, loss: torch.Tensor) -> None:
        self._pending.append((step, loss.detach()))

    def poll(self, step: int, force: bool = False) -> tuple[tuple[int, float] | None, bool]:
        # Every process must poll at the same steps (the all-reduce below), so the schedule depends on
        # the step alone; only a single process may also poll when its own signal arrives.
        due = force or step % self.every == 0 or (not self.dist.distributed and self.stop.requested)
        if not due:
            return None, False
        first_bad = self._read()
        nonfinite, stopping = parallel.any_flag(self.dist, first_bad is not None, self.stop.requested)
        if nonfinite and first_bad is None:  # another process saw it
            first_bad = (step, float("nan"))
        return first_bad, stopping

    def _read(self) -> tuple[int, float] | None:
        if not self._pending:
            return None
        steps = [s for s, _ in self._pending]
        values = torch.stack([v.float().reshape(()) for _, v in self._pending]).cpu()  # the one sync
        self._pending.clear()
        bad = (~torch.isfinite(values)).nonzero()
        if not len(bad):
            return None
        i = int(bad[0])
        return steps[i], float(values[i])
