"""``--execution auto``: sample eagerly, or switch to CUDA graphs / compile when the run pays them back.

The first network passes run eagerly: ``WARMUP_PASSES`` untimed (allocator, cuDNN and Triton
autotuning), then ``TIMED_PASSES`` timed one by one. With that time per eager pass and the number of
passes still to come, ``gladiff.models.payback.choose`` picks the execution of the lowest estimated
total time (eager, ``graph`` or ``compile+graph``, with the model's measured speed-up and setup
time), and every later pass runs that way. The decision is printed once. Samples do not depend on
the decision beyond floating-point rounding (``graph`` replays eager's kernels; ``compile`` fuses
them); pass an explicit ``--execution`` for runs that must repeat bit for bit.
"""
from __future__ import annotations

import time

import torch

from gladiff.models.payback import Payback, choose, explain

from .graphed import for_sampling

WARMUP_PASSES = 2  # eager passes before timing: the first ones pay one-time costs
TIMED_PASSES = 4  # eager passes timed for the decision (each between two synchronisations)


class AutoExecution:
    """Callable ``model(x, t, y)`` that decides its execution after a few timed eager passes.

    ``planned_passes``: the network passes this process will make in all (batches x passes per
    batch); ``options``: execution name -> ``Payback`` for this model (``payback.options_for``);
    ``report``: called with the one-line decision (default ``print``); ``clock``: seconds (tests
    pass a fake one). ``self.choice`` is ``None`` until decided, then the chosen execution.
    """

    def __init__(self, model, device, planned_passes: int, options: dict[str, Payback],
                 compile_scope: str = "model", report=print, clock=time.perf_counter):
        self.model, self.device, self.planned = model, torch.device(device), int(planned_passes)
        self.options, self.compile_scope, self.report, self.clock = dict(options), compile_scope, report, clock
        self.calls, self.largest, self.timed_s = 0, 0, 0.0
        # Nothing to decide without options, or when the run ends before the timing does.
        undecided = self.options and self.planned > WARMUP_PASSES + TIMED_PASSES
        self.choice: str | None = None if undecided else "eager"
        self._run = model

    def __getattr__(self, name):  # in_channels, null_label, ...: the wrapped model's attributes
        if name in ("model", "_run"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x, t, y):
        self.largest = max(self.largest, x.shape[0])
        if self.choice is not None:
            return self._run(x, t, y)
        self.calls += 1
        if self.calls <= WARMUP_PASSES:
            return self.model(x, t, y)
        self._sync()
        start = self.clock()
        out = self.model(x, t, y)
        self._sync()
        self.timed_s += self.clock() - start
        if self.calls == WARMUP_PASSES + TIMED_PASSES:
            self._decide()
        return out

    def _decide(self) -> None:
        per_pass = self.timed_s / TIMED_PASSES
        left = max(0, self.planned - self.calls)
        self.choice = choose(left, per_pass, self.options)
        self.report(explain("sampling --execution", self.choice, left, per_pass, self.options))
        if self.choice != "eager":
            fast = for_sampling(self.model, self.choice, self.device, self.compile_scope)
            fast.batch = self.largest  # a PadBatch: a ragged last batch reuses the full batch's graphs
            self._run = fast
