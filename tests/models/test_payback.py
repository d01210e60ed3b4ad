"""The rule behind ``--compile auto`` / ``--execution auto``: a faster execution is chosen exactly when
the steps still to run save more than its setup costs, checked against totals worked out by hand."""
import math

import pytest

from gladiff.models import COMPILE_SCOPES
from gladiff.models.payback import (SPEEDUPS, Payback, break_even_steps, choose, estimated_total_s, explain,
                                    options_for)
from gladiff.sample.graphed import EXECUTIONS


def test_compile_pays_only_when_the_remaining_steps_save_more_than_it_costs():
    # 0.1 s per eager step, compiled 2x faster (0.05 s saved per step), 30 s to compile: break-even 600.
    blocks = {"blocks": Payback(speedup=2.0, setup_s=30.0)}
    assert estimated_total_s(1000, 0.1) == pytest.approx(100.0)
    assert estimated_total_s(1000, 0.1, blocks["blocks"]) == pytest.approx(30.0 + 50.0)
    assert break_even_steps(0.1, blocks["blocks"]) == pytest.approx(600.0)
    assert choose(599, 0.1, blocks) == "eager"
    assert choose(601, 0.1, blocks) == "blocks"
    assert choose(600, 0.1, blocks) == "eager"  # a tie: nothing to gain
    assert choose(10**6, 0.0, blocks) == "eager"  # free steps: nothing to save
    assert choose(10**6, 0.1, {}) == "eager"  # no measured option for this model


def test_the_issue_s_h200_digits_run_stays_eager_and_a_long_run_compiles():
    # Issue 12: DiG-S/2, batch 256, eager 2362 img/s, --compile blocks 3451 img/s, 300 steps took 53 s
    # eagerly and 88 s compiled: the compile cost 88 - 53 + (300 * 256 / 2362 - 300 * 256 / 3451) s.
    eager, fast = 256 / 2362, 256 / 3451
    setup = 88 - 53 + 300 * (eager - fast)
    measured = {"blocks": Payback(speedup=eager / fast, setup_s=setup)}
    assert choose(300, eager, measured) == "eager"  # what the stopwatch said: eager was faster
    assert choose(400_000, eager, measured) == "blocks"
    assert break_even_steps(eager, measured["blocks"]) == pytest.approx(setup / (eager - fast))


def test_the_option_of_lowest_total_wins():
    options = {"graph": Payback(speedup=1.25, setup_s=1.0), "compile+graph": Payback(speedup=4.0, setup_s=20.0)}
    # 10 ms per pass. graph saves 2 ms per pass, compile+graph 7.5 ms.
    assert choose(400, 0.01, options) == "eager"  # graph saves 0.8 s < 1 s; compile+graph 3 s < 20 s
    assert choose(1000, 0.01, options) == "graph"  # graph: 1 + 8 = 9 s < 10 s; compile+graph 22.5 s
    assert choose(5000, 0.01, options) == "compile+graph"  # 20 + 12.5 = 32.5 s < graph's 41 s
    line = explain("sampling --execution", "graph", 1000, 0.01, options)
    assert line.endswith(": graph") and "eager 10 s" in line and "graph 9 s" in line
    with pytest.raises(ValueError, match=">= 0"):
        choose(-1, 0.01, options)


def test_constants_are_looked_up_by_zoo_name_then_family():
    table = {"train": {"DiG-XL/2": {"blocks": Payback(1.5, 40.0)}, "DiG": {"blocks": Payback(2.0, 30.0)}},
             "sample": {}}
    assert options_for("train", "DiG-XL/2", table) == {"blocks": Payback(1.5, 40.0)}
    assert options_for("train", "DiG-S/2", table) == {"blocks": Payback(2.0, 30.0)}
    assert options_for("train", "DiT-S/2", table) == {}
    assert options_for("sample", "DiG-S/2", table) == {}
    assert options_for("train", None, table) == {}
    with pytest.raises(ValueError, match="work must be one of"):
        options_for("serve", "DiG-S/2", table)
    with pytest.raises(ValueError, match="speedup > 0"):
        Payback(speedup=0.0, setup_s=1.0)


def test_shipped_constants_name_real_options_and_both_families():
    for family in ("DiG", "DiT"):  # DiT gets every option DiG gets
        assert set(options_for("train", f"{family}-S/2")) == set(options_for("train", "DiG-S/2"))
        assert set(options_for("sample", f"{family}-S/2")) == set(options_for("sample", "DiG-S/2"))
    for model, options in SPEEDUPS["train"].items():
        assert set(options) <= set(COMPILE_SCOPES), model
    for model, options in SPEEDUPS["sample"].items():
        assert set(options) <= set(EXECUTIONS) - {"eager"}, model
    for work in SPEEDUPS.values():
        for options in work.values():
            for p in options.values():
                assert p.speedup > 1 and math.isfinite(p.setup_s)
