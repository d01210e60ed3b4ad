"""What a running job shows: a progress bar with loss and img/s, TensorBoard scalars, metrics.jsonl.

Only rank 0 writes; the loss shown is the mean over all ranks and over the last ``log_every`` steps.
A run that resumes at step S first drops what an earlier process logged after S (those steps are
trained again), so every step appears once in metrics.jsonl and in TensorBoard.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import parallel
from .parallel import Dist


class RunLog:
    """Call ``step(step, loss, grad_norm, lr)`` after every optimizer step and ``close()`` at the end."""

    def __init__(self, run_dir: str | Path, dist: Dist, start_step: int, total_steps: int,
                 global_batch_size: int, log_every: int, tensorboard: bool = True, progress: bool = True):
        self.dist, self.log_every, self.global_batch_size = dist, log_every, global_batch_size
        self.run_dir = Path(run_dir)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not (progress and dist.is_main), dynamic_ncols=True)
        self.writer = (_tensorboard_writer(self.run_dir / "tb", purge_step=start_step + 1)
                       if tensorboard and dist.is_main else None)
        self._metrics = None
        if dist.is_main:
            metrics = self.run_dir / "metrics.jsonl"
            drop_rows_after(metrics, start_step)
            self._metrics = open(metrics, "a")
        self._loss_sum = None
        self._count = 0
        self._t0 = self._start = time.perf_counter()
        self._last_step = start_step

    def due(self, step: int) -> bool:
        """Whether ``step`` (steps done) writes a log line: the loop reads the GPU there anyway."""
        return step % self.log_every == 0

    def step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None, lr: float) -> None:
        """Record the step that just finished (``step`` = steps done so far); ``grad_norm`` is only
        read on the steps that are ``due``."""
        # Summing on the device avoids a host sync per step; the sync happens every log_every steps.
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._count += 1
        self.bar.update(1)
        if not self.due(step):
            return
        mean_loss = parallel.mean_over_ranks(self.dist, self._loss_sum / self._count).item()
        elapsed = time.perf_counter() - self._t0
        img_s = (step - self._last_step) * self.global_batch_size / max(elapsed, 1e-9)
        scalars = {"loss": mean_loss, "grad_norm": float(grad_norm), "lr": lr, "img_per_s": img_s,
                   "elapsed_s": time.perf_counter() - self._start}
        self.write(step, scalars)
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{img_s:.0f}")
        self._loss_sum, self._count = None, 0
        self._t0, self._last_step = time.perf_counter(), step

    def write(self, step: int, scalars: dict) -> None:
        """Log named numbers at ``step`` to TensorBoard and metrics.jsonl (rank 0 only)."""
        if not self.dist.is_main:
            return
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"train/{k}", v, step)
        self._metrics.write(json.dumps({"step": step, **scalars}) + "\n")
        self._metrics.flush()

    def message(self, text: str) -> None:
        """A line above the bar (rank 0 only)."""
        if self.dist.is_main:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self._metrics is not None:
            self._metrics.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Keep only the rows of the metrics file ``path`` up to ``step`` (and none that a crash left half
    written); rewritten atomically, and only if something is dropped."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tensorboard_writer(folder: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard scalars "
                      "(pip install 'gladiff[tensorboard]'); metrics.jsonl is still written", stacklevel=3)
        return None
    # Events from step purge_step on, logged by an earlier process, are hidden (they are replayed).
    return SummaryWriter(str(folder), purge_step=purge_step)
