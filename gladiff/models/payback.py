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
# Measured with benchmarks/compile_payback.py on one H200 on 2026-12-03 (the result files named on
# each line, under benchmarks/results/); the family entries carry DiG-S/2's and DiT-S/2's numbers to
# every size of the family until larger sizes are measured.
SPEEDUPS: dict[str, dict[str, dict[str, Payback]]] = {
    "train": {
        # Whole `gladiff train` runs on an H200 (S/2, 256 px, batch 256, synthetic latents,
        # benchmarks/compile_payback.py): DiG-S/2 eager 1672 img/s, blocks 4018
        # (compile_payback_train_H200_DiG-S2.json). Its setup there, 3.8 s, came from a warm Inductor
        # cache (train_vs_bench had compiled the same graphs minutes before on that machine); a cold
        # compile, what a user's first run pays, added 46 s of warm-up (train_vs_bench_H200_DiG-S2_256_b256.json:
        # 47.5 s against eager's 1.4 s): the rule takes the cold figure.
        "DiG": {"blocks": Payback(speedup=2.40, setup_s=46.0)},
        # DiT-S/2, same runs, cold: eager 3430 img/s, blocks 6353, 12.4 s more warm-up
        # (compile_payback_train_H200_DiT-S2.json).
        "DiT": {"blocks": Payback(speedup=1.85, setup_s=12.4)},
    },
    "sample": {
        # compile_payback_sample_H200.json (S/2, 256 px, batch 64, DDIM 50 with guidance, bf16, per
        # network pass): DiG eager 26.7 ms, graph 25.4, compile+graph 8.0 with 15.3 s of setup; DiT
        # 16.0 / 15.1 / 6.3 with 9.8 s. Capturing alone cost nothing measurable.
        "DiG": {"graph": Payback(speedup=1.05, setup_s=0.0),
                "compile+graph": Payback(speedup=3.34, setup_s=15.3)},
        "DiT": {"graph": Payback(speedup=1.06, setup_s=0.0),
                "compile+graph": Payback(speedup=2.55, setup_s=9.8)},
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
