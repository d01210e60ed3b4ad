"""A training run becomes a model folder: the EMA (or raw) weights of its newest valid checkpoint,
its model/data/objective as ``config.json``, and a card with the training config, the steps and the
evaluation numbers found in the run folder."""
from __future__ import annotations

import json
from pathlib import Path

from gladiff.errors import UsageError

from .card import model_card
from .folder import check_out_dir, save_pretrained

# Evaluation results a run folder may hold: the demo's digit check, and `gladiff eval --json RUN/eval*.json`.
EVAL_FILES = ("score.json", "eval*.json")


def export_run(run_or_checkpoint: str | Path, out_dir: str | Path, *, use_ema: bool = True) -> Path:
    """Write the model of a run folder (its newest valid checkpoint) or of one checkpoint file to the
    model folder ``out_dir``; returns ``out_dir``. ``out_dir`` must be new, empty or an earlier
    export (whose files are replaced), and cannot be the run folder."""
    from gladiff.train import checkpoint as ckpt
    from gladiff.train.build import build_model, build_objective

    out = Path(out_dir)
    path = ckpt.resolve_checkpoint(run_or_checkpoint)
    run_dir = ckpt.run_dir_of(path)
    _check_out_dir(out, run_dir)
    state = ckpt.read_checkpoint(path)
    spec, cfg, info = state["model_spec"], state["config"], state["data_info"]
    which = "ema" if use_ema else "model"
    model = build_model(spec)
    ckpt.load_model_state(model, ckpt.model_weights(state, which), what=f"checkpoint {path}")
    objective = build_objective(cfg["objective"], cfg.get("objective_opts"))
    source = {"kind": "gladiff-run", "checkpoint": path.name, "step": int(state["step"]), "weights": which}
    evaluations, last_log = run_evaluations(run_dir), _last_log(run_dir)
    return save_pretrained(model, out, objective=objective, data=info, source=source,
                           card=lambda config: model_card(config, parameters=_count(model), training=cfg,
                                                          evaluations=evaluations, last_log=last_log))


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_out_dir(out: Path, run_dir: Path) -> None:
    if out.resolve() == run_dir.resolve():
        raise UsageError(f"output folder {out} is a run folder; export into a new folder")
    check_out_dir(out)


def run_evaluations(run_dir: Path) -> list[tuple[str, dict]]:
    """``(file name, results)`` of the evaluation files in a run folder (``EVAL_FILES``)."""
    found = []
    for pattern in EVAL_FILES:
        for f in sorted(Path(run_dir).glob(pattern)):
            try:
                results = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # a file being written, or not ours: the card just leaves it out
            if isinstance(results, dict):
                found.append((f.name, results))
    return found


def _last_log(run_dir: Path) -> dict | None:
    """The last row of ``metrics.jsonl`` (loss, grad norm, lr, throughput), if any."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        return {k: v for k, v in row.items() if k in ("step", "loss", "grad_norm", "lr")}
    return None
