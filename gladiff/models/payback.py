"""When a faster execution pays for itself: the rule behind ``--compile auto`` and ``--execution auto``.

Compiling (``torch.compile``) or capturing CUDA graphs makes every later step faster but costs time
once. Counted over the whole command, it pays when

    steps_left * (t_eager - t_fast) > t_setup,      with t_fast = t_eager / speedup,

that is, when the time it saves on the steps still to run exceeds the time it costs to set up.
``t_eager`` is *measured* on the run itself (a few eager steps, timed once warm), so the rule holds
at any resolution and batch; ``speedup`` and ``t_setup`` are per-model constants measured on a GPU
(``SPEEDUPS`` below, ``benchmarks/compile_payback.py`` measures them). Among several options the
one with the lowest estimated total time wins, eager included::

    total(eager)  = steps_left * t_eager
    total(option) = t_setup + steps_left * t_eager / speedup

A training *step* is the whole optimizer step; a sampling *step* is one network pass (a guided pass
counts once). Nothing here imports torch: the rule is arithmetic, tested on the CPU with made-up
timings (``tests/models/test_payback.py``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Payback:
    """What an execution option buys and costs: ``speedup`` = t_eager / t_fast per step once warm,
    ``setup_s`` = seconds it adds once (compiling, capturing, their warm-up passes)."""

    speedup: float
    setup_s: float

    def __post_init__(self):
        if not self.speedup > 0 or self.setup_s < 0:
            raise ValueError(f"a payback needs speedup > 0 and setup_s >= 0, got {self}")


# Per-model constants: work ("train" | "sample") -> model -> option -> Payback. A model is looked up
# by its zoo name ("DiG-XL/2"), then by its family ("DiG"); a model found in neither stays eager.
# Options: train: "blocks" (``gladiff.models.compile_model(model, "blocks")``, in place mid-run);
# sample: the executions of ``gladiff.sample.for_sampling`` ("graph", "compile+graph").
# PROVISIONAL (2026-12-03): derived from the result files named on each line (under benchmarks/results/),
# not yet from benchmarks/compile_payback.py; replace them with its output (it prints this table).
SPEEDUPS: dict[str, dict[str, dict[str, Payback]]] = {
    "train": {
        # train_compile_H100_digits.json (DiG-S/2, 32 px, b64, H100, whole `gladiff train` runs):
        # eager 701 img/s, blocks 1369 img/s; the blocks run's fixed time 37.9 s above eager's.
        "DiG": {"blocks": Payback(speedup=1.95, setup_s=38.0)},
        # No whole-run measurement yet. Speedup: DiT-XL/2 256 b32 eager 99.6 ms
        # (archive/model_bench_H200_eager_graph_chunk64.json) vs compiled 70.0 ms
        # (archive/model_bench_H200_xl256_compile.json); setup: block-by-block compile+graph 6.9-9.5 s
        # (archive/model_bench_H200_256_blocks.json).
        "DiT": {"blocks": Payback(speedup=1.42, setup_s=9.5)},
    },
    "sample": {
        # sampling_H200.json (S/2, 256 px, b32, DDIM 50 with guidance, ms per step): DiG eager 16.25,
        # graph 14.02, compile+graph 5.31; DiT 8.90 / 8.06 / 4.61. Setup of compile+graph:
        # archive/model_bench_sample_H200_final.json (DiG 20.7 s, DiT 11.2 s); of a capture alone: graph
        # rows of archive/model_bench_H200_eager_graph_chunk64.json (0.2-2.2 s), taken as 2 s.
        "DiG": {"graph": Payback(speedup=1.16, setup_s=2.0),
                "compile+graph": Payback(speedup=3.06, setup_s=20.7)},
        "DiT": {"graph": Payback(speedup=1.10, setup_s=2.0),
                "compile+graph": Payback(speedup=1.93, setup_s=11.2)},
    },
}


def options_for(work: str, model_name: str | None, table: dict | None = None) -> dict[str, Payback]:
    """The options measured for ``model_name`` (zoo name, then its family) in ``work``; ``{}`` if none."""
    table = SPEEDUPS if table is None else table
    if work not in table:
        raise ValueError(f"work must be one of {sorted(table)}, got {work!r}")
    by_model = table[work]
    if not model_name:
        return {}
    return dict(by_model.get(model_name) or by_model.get(model_name.split("-", 1)[0]) or {})


def estimated_total_s(steps_left: float, eager_step_s: float, option: Payback | None = None) -> float:
    """Seconds the remaining ``steps_left`` steps take: eagerly (``option=None``) or under ``option``
    (its setup plus the steps at ``eager_step_s / speedup``)."""
    if option is None:
        return steps_left * eager_step_s
    return option.setup_s + steps_left * eager_step_s / option.speedup


def choose(steps_left: float, eager_step_s: float, options: dict[str, Payback]) -> str:
    """The option of lowest estimated total time for the rest of the run: ``"eager"`` unless one of
    ``options`` (name -> Payback) saves more on ``steps_left`` steps than its setup costs. Ties go to
    eager (nothing to gain, a compile to risk)."""
    if steps_left < 0 or eager_step_s < 0:
        raise ValueError(f"steps_left and eager_step_s must be >= 0, got {steps_left}, {eager_step_s}")
    best, best_s = "eager", estimated_total_s(steps_left, eager_step_s)
    for name, option in options.items():
        total = estimated_total_s(steps_left, eager_step_s, option)
        if total < best_s:
            best, best_s = name, total
    return best


def break_even_steps(eager_step_s: float, option: Payback) -> float:
    """The number of remaining steps above which ``option`` beats eager (``inf`` if it never does)."""
    saved = eager_step_s * (1.0 - 1.0 / option.speedup)
    return option.setup_s / saved if saved > 0 else float("inf")


def explain(what: str, choice: str, steps_left: float, eager_step_s: float,
            options: dict[str, Payback]) -> str:
    """One line saying what was chosen and why, e.g. for the training log."""
    parts = [f"eager {estimated_total_s(steps_left, eager_step_s):.0f} s"]
    parts += [f"{name} {estimated_total_s(steps_left, eager_step_s, o):.0f} s "
              f"(setup {o.setup_s:g} s, x{o.speedup:g})" for name, o in options.items()]
    return (f"{what} auto: {eager_step_s * 1e3:.1f} ms per eager step, {steps_left:.0f} steps left; "
            f"estimated {', '.join(parts)}: {choice}")
