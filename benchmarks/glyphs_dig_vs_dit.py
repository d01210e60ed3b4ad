"""DiG vs DiT on the built-in glyphs at equal GPU time: the glyph check along the way (issue 13, item 3).

One ``run`` trains one model at one resolution from scratch for a budget of training time and scores
its EMA weights with the glyph check (``gladiff.eval.glyphs``) every ``--eval-every`` seconds of
training and at the end; the evaluations are left out of the clock. Both models get the same recipe
(``RECIPE``, resolved through ``gladiff.train.resolve_config`` and built with the training loop's own
components): pixel space, 3 channels, flow matching (linear interpolant, velocity MSE, uniform t),
AdamW lr 3e-4 after 200 warm-up steps, batch 128, gradient clipping 1.0, EMA 0.998, bf16 autocast on a
GPU, each model's blocks compiled for training (``--compile blocks``) and its EMA copy compiled and
replayed from CUDA graphs for sampling (``compile+graph``, as ``gladiff sample`` offers). The contenders are the zoo's ``DiG-S/2`` and
``DiT-S/2`` (12 blocks, width 384, 6 heads, patch 2: 1,024 tokens at 64 px, 4,096 at 128 px). Every
evaluation samples 10 per class (490 images) with a fixed sampler and seed (Euler, 25 steps, no
guidance, sampling seed 0) and compares them with 2 x 490 real renders.

    # one H200, one run per call (each under ~9 minutes; commands in docs/eval.md)
    python benchmarks/glyphs_dig_vs_dit.py run --model DiG --image-size 64 --minutes 5.5 --eval-every 60 --eval-every-steps 500 --seed 0 --out-dir $OUT
    # the SREM ablation at equal steps: same recipe, DiG options, evaluations at fixed steps
    python benchmarks/glyphs_dig_vs_dit.py run --model DiG --image-size 64 --max-steps 2500 --minutes 7 \\
        --eval-every 0 --eval-every-steps 500 --model-opt scan_schedule=flip --out-dir $OUT
    # quality against GPU time and against steps, one figure per resolution, and a Markdown table
    python benchmarks/glyphs_dig_vs_dit.py plot --dir benchmarks/results/glyphs_dig_vs_dit
    # CPU smoke test (seconds): tiny models, 16 px, a few steps
    python benchmarks/glyphs_dig_vs_dit.py run --smoke --model DiT --out-dir /tmp/glyphs-smoke

A run writes ``OUT_DIR/<size>px_<label>_seed<seed>.json`` after every evaluation (so an interrupted
run keeps its points): card, versions, the exact command, the resolved recipe, and per evaluation the
training wall seconds, GPU seconds (CUDA events around the training segments), step, images seen,
mean loss since the previous point and the glyph check's numbers; and ``<...>.jpg``, the last
evaluation's samples (4 per class, one class per column).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from digits_dig_vs_dit import git_commit, machine  # noqa: E402  (the digit comparison's helpers)
from gladiff.bench.common import environment, write_json  # noqa: E402

MODELS = {"DiG": "DiG-S/2", "DiT": "DiT-S/2"}
# The training recipe both models get (TrainConfig fields); model, image size and seed come per run.
RECIPE = dict(data="glyphs", objective="flow", global_batch_size=128, lr=3e-4, warmup_steps=200, grad_clip=1.0,
              ema_decay=0.998, precision="auto", compile="blocks", num_workers="auto", tensorboard=False,
              ckpt_every=0, sample_every=0)
# The evaluation: fixed sampler and seed, EMA weights, 10 samples per class against 2 x 490 real renders.
EVAL = dict(per_class=10, sampler="euler", steps=25, cfg_scale=1.0, seed=0, batch_size=256)
# --smoke: the same code on a CPU in seconds (tiny networks, 16 px glyphs, 64 tokens, few samples).
SMOKE = dict(model_opts=dict(depth=2, hidden_size=64, num_heads=2), image_size=16, global_batch_size=8,
             warmup_steps=2, compile="none", device="cpu", max_steps=6, minutes=0.0, eval_every=0.0,
             eval_every_steps=3, per_class=2, sample_steps=3)
DEFAULT_OUT = ROOT / "benchmarks/results/glyphs_dig_vs_dit"


def train_config(kind: str, image_size: int, seed: int, *, model_opts: dict | None = None, device: str = "auto",
                 run_dir: str | Path = "runs/glyphs_dig_vs_dit", **recipe_overrides):
    """The resolved ``TrainConfig`` of one run: ``RECIPE`` with ``kind``'s model, size and seed."""
    from gladiff.train import resolve_config

    overrides = {**RECIPE, **recipe_overrides, "model": MODELS[kind], "model_opts": dict(model_opts or {}),
                 "image_size": image_size, "seed": seed, "device": device, "run_dir": str(run_dir), "resume": False}
    return resolve_config(overrides=overrides)


def run_label(kind: str, model_opts: dict, smoke: bool = False) -> str:
    """``DiG``, ``DiT``, or e.g. ``DiG-scan_schedule=flip-dwconv=False`` for an ablation (smoke runs say so)."""
    opts = {k: v for k, v in model_opts.items() if not (smoke and k in SMOKE["model_opts"])}
    return "-".join([kind, *(f"{k}={v}" for k, v in sorted(opts.items()))] + (["smoke"] if smoke else []))


def file_stem(image_size: int, label: str, seed: int) -> str:
    """``64px_DiG-scan_schedule_flip_seed0``: the label with every character outside ``[A-Za-z0-9._-]``
    (the options' ``=``) made ``_``, so that file names survive copies and transfers that refuse odd
    characters (the label itself is in the JSON)."""
    return f"{image_size}px_{re.sub(r'[^A-Za-z0-9._-]', '_', label)}_seed{seed}"


class TrainClock:
    """Training time with the evaluations left out: host wall seconds (exact at each pause, which
    synchronises the GPU) and, on a GPU, CUDA-event seconds of the training segments."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.wall, self.gpu = 0.0, 0.0
        self._t0 = self._e0 = None

    def start(self) -> None:
        if self.cuda:
            self._e0 = torch.cuda.Event(enable_timing=True)
            self._e0.record()
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds so far (host clock: the GPU may still be a few steps behind)."""
        return self.wall + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def pause(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.gpu += self._e0.elapsed_time(end) / 1000
        self.wall += time.perf_counter() - self._t0
        self._t0 = None


def evaluate(sample_net, objective, info: dict, ev: dict, scorer, device, precision) -> tuple[dict, np.ndarray]:
    """Sample ``ev["per_class"]`` per class with ``sample_net`` (the EMA weights, wrapped for sampling)
    and score them; returns the glyph check's numbers (plus sampling and scoring seconds) and the
    uint8 images."""
    from gladiff.sample.generate import class_labels, generate
    from gladiff.train.parallel import Dist

    k = info["num_classes"]
    labels = class_labels(ev["per_class"] * k, k, classes=range(k))
    shape = (info["in_channels"], info["sample_size"], info["sample_size"])
    t0 = time.perf_counter()
    _, images = generate(sample_net, objective, labels, shape, seed=ev["seed"], batch_size=ev["batch_size"],
                         sampler=ev["sampler"], steps=ev["steps"], cfg_scale=ev["cfg_scale"], dist=Dist(device=device),
                         autocast=precision.autocast, progress=False)
    t1 = time.perf_counter()
    score = scorer.score(images, labels.numpy())
    return {**score, "sample_seconds": round(t1 - t0, 2), "score_seconds": round(time.perf_counter() - t1, 2)}, images


def run(args) -> dict:
    """Train, evaluate along the way, write the JSON after every point; returns the payload."""
    from gladiff.eval.glyphs import GlyphScorer
    from gladiff.sample.graphed import for_sampling
    from gladiff.sample.images import save_grid
    from gladiff.train.build import build_dataset, build_model, build_objective, data_info, model_spec
    from gladiff.train.data_order import BatchStream, batch_loader, resolve_num_workers
    from gladiff.train.ema import EMA
    from gladiff.train.loop import adamw_options, rank_seed, seed_everything, set_lr
    from gladiff.train.parallel import Dist, pick_device, wrap_model
    from gladiff.train.precision import Precision, set_tf32

    t_start = time.perf_counter()
    opts = dict(args.model_opts)
    recipe = {}
    if args.smoke:
        opts = {**SMOKE["model_opts"], **opts}
        recipe = {k: SMOKE[k] for k in ("global_batch_size", "warmup_steps", "compile")}
    if args.batch_size:
        recipe["global_batch_size"] = args.batch_size
    if args.compile:
        recipe["compile"] = args.compile
    ev = dict(EVAL, per_class=args.per_class, steps=args.sample_steps)
    label = run_label(args.model, opts, args.smoke)
    out_dir = Path(args.out_dir)
    stem = file_stem(args.image_size, label, args.seed)
    cfg = train_config(args.model, args.image_size, args.seed, model_opts=opts, device=args.device,
                       run_dir=out_dir / stem, **recipe)

    # ---- what is trained, on what: the training loop's components, in its order
    device = pick_device(cfg.device)
    dist = Dist(device=device)
    set_tf32(cfg.tf32)
    seed_everything(cfg.seed)
    dataset = build_dataset(cfg)
    objective = build_objective(cfg.objective, cfg.objective_opts)
    info = data_info(dataset)
    spec = model_spec(cfg, info, objective.learn_sigma)
    model = build_model(spec).to(device)
    ema, precision = EMA(model, cfg.ema_decay), Precision(cfg.precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), **adamw_options(cfg, device))
    seed_everything(rank_seed(cfg.seed, 0))
    stream = BatchStream(len(dataset), cfg.global_batch_size, cfg.seed)
    workers = resolve_num_workers(cfg.num_workers, dataset, device.type)
    batches = iter(batch_loader(dataset, stream, workers, device.type == "cuda",
                                torch.Generator().manual_seed(rank_seed(cfg.seed, 0))))
    net = wrap_model(model, dist, cfg.compile)
    model.validate_inputs = False  # labels come from the dataset: no host sync per step
    # The EMA weights change in place, so one wrapper (compiled once, graphs captured once) serves
    # every evaluation.
    execution = args.sample_execution or ("compile+graph" if device.type == "cuda" else "eager")
    sample_net = for_sampling(ema.model, execution, device)
    # The real renders the check compares with, drawn before the clock starts.
    n_samples = ev["per_class"] * info["num_classes"]
    scorer = GlyphScorer(2 * n_samples)
    scorer.reference_features(args.image_size, n_samples)
    ev_meta = {**ev, "n_samples": n_samples, "n_reference": scorer.n_reference,
               "weights": "EMA", "execution": execution}

    payload = {
        "what": "DiG vs DiT on the built-in glyphs at equal GPU time (benchmarks/glyphs_dig_vs_dit.py)",
        "label": label, "kind": args.model, "model": cfg.model, "model_opts": opts, "image_size": args.image_size,
        "tokens": (args.image_size // model.patch_size) ** 2, "seed": args.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "budget_minutes": args.minutes, "max_steps": args.max_steps, "eval_every_seconds": args.eval_every,
        "eval_every_steps": args.eval_every_steps,
        "environment": {**environment(), "machine": machine(), "gladiff_commit": git_commit(),
                        "command": "python benchmarks/glyphs_dig_vs_dit.py " + " ".join(args.argv)},
        "train_config": cfg.to_dict(), "eval": ev_meta, "loader_workers": workers, "smoke": args.smoke,
        "points": [], "done": False,
    }
    json_path = out_dir / f"{stem}.json"
    print(f"== {label} at {args.image_size} px ({payload['tokens']} tokens), seed {args.seed}: "
          f"{payload['params']:,} parameters, {workers} loader workers, {cfg.compile} compile, "
          f"budget {args.minutes} min / {args.max_steps or 'no'} max steps", flush=True)

    # ---- the loop: the training loop's step, a clock that leaves evaluations out
    budget = args.minutes * 60
    clock = TrainClock(device)
    step, loss_sum, loss_n, data_wait = 0, torch.zeros((), device=device), 0, 0.0
    next_eval_t = args.eval_every or math.inf
    images = None
    payload["setup_seconds"] = round(time.perf_counter() - t_start, 1)
    t_first = time.perf_counter()
    while True:
        t_wait = time.perf_counter()
        x, y = next(batches)
        if step > 0:
            data_wait += time.perf_counter() - t_wait
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        set_lr(optimizer, cfg, step)
        with precision.autocast():
            loss = objective.training_loss(net, x, y)["loss"]
        precision.backward(loss)
        precision.step(optimizer, model.parameters(), cfg.grad_clip, measure_norm=False)
        ema.update(model)
        step += 1
        loss_sum += loss.detach().float()
        loss_n += 1
        if step == 1:  # compilation and the loader's start happen in the first step: left off the clock
            if device.type == "cuda":
                torch.cuda.synchronize()
            payload["first_step_seconds"] = round(time.perf_counter() - t_first, 1)
            clock.start()
            continue
        done = (budget > 0 and clock.elapsed() >= budget) or (args.max_steps and step >= args.max_steps)
        due = clock.elapsed() >= next_eval_t or (args.eval_every_steps and step % args.eval_every_steps == 0)
        if not (done or due):
            continue
        clock.pause()
        mean_loss = float(loss_sum) / loss_n
        point, images = evaluate(sample_net, objective, info, ev, scorer, device, precision)
        point = {"train_seconds": round(clock.wall, 2), "gpu_seconds": round(clock.gpu, 2) if clock.cuda else None,
                 "wall_seconds": round(time.perf_counter() - t_start, 1), "step": step,
                 "images_seen": step * cfg.global_batch_size, "loss": mean_loss,
                 "data_wait_seconds": round(data_wait, 2), **point}
        payload["points"].append(point)
        payload["img_per_s"] = round((step - 1) * cfg.global_batch_size / max(clock.wall, 1e-9), 1)
        write_json(json_path, payload)
        print(f"   step {step:6d}  train {clock.wall:7.1f} s  loss {mean_loss:.4f}  acc {100 * point['accuracy']:5.1f}%  "
              f"fd {point['fd']:8.3f} (floor {point['fd_real_halves']:.3f})  P/R {point['precision']:.3f}/"
              f"{point['recall']:.3f}  [eval {point['sample_seconds'] + point['score_seconds']:.1f} s]", flush=True)
        if not math.isfinite(mean_loss):
            payload["stopped_by"] = "non-finite loss"
            break
        if done:
            payload["stopped_by"] = "budget" if budget > 0 and clock.wall >= budget else "max_steps"
            break
        loss_sum.zero_()
        loss_n = 0
        while next_eval_t <= clock.wall:
            next_eval_t += args.eval_every or math.inf
        clock.start()
    del batches  # stop the loader workers
    k = info["num_classes"]
    save_grid(out_dir / f"{stem}.jpg", images[:4 * k], nrow=k, scale=max(1, 32 // args.image_size))
    payload.update(done=True, total_wall_seconds=round(time.perf_counter() - t_start, 1))
    write_json(json_path, payload)
    print(f"wrote {json_path} and {stem}.jpg ({payload['total_wall_seconds']:.0f} s in all)")
    return payload


# ----------------------------------------------------------------------------- plot and table
def load_runs(folder: str | Path) -> list[dict]:
    """Every run JSON in ``folder`` (finished or not), sorted by size, label and seed."""
    runs = [json.loads(p.read_text()) for p in Path(folder).glob("*px_*_seed*.json")]
    return sorted((r for r in runs if r.get("points")), key=lambda r: (r["image_size"], r["label"], r["seed"]))


def gpu_minutes(point: dict) -> float:
    """The point's GPU minutes (its training wall minutes where there was no GPU: smoke runs)."""
    return (point["gpu_seconds"] if point.get("gpu_seconds") is not None else point["train_seconds"]) / 60


def at_or_before(points: list[dict], key, limit: float) -> dict | None:
    """The last point whose ``key(point)`` is at most ``limit`` (1% slack), or None."""
    inside = [p for p in points if key(p) <= limit * 1.01]
    return inside[-1] if inside else None


def nearest_step(points: list[dict], step: int, slack: float = 0.03) -> dict | None:
    """The point whose step is nearest ``step``, either side, if within ``slack`` of it (runs
    evaluated on a clock reach a given step at different evaluations), else None."""
    best = min(points, key=lambda p: abs(p["step"] - step))
    return best if abs(best["step"] - step) <= slack * step else None


def ablation_opts(run: dict) -> dict:
    """The DiG options a run set beyond the zoo model (``{}`` for the DiG vs DiT runs; the smoke
    sizes do not count)."""
    smoke = SMOKE["model_opts"] if run.get("smoke") else {}
    return {k: v for k, v in run.get("model_opts", {}).items() if k not in smoke}


def common_step(runs: list[dict]) -> int:
    """The largest step every run was evaluated at (``--eval-every-steps`` puts them on a common
    grid), else the largest step count all of them reached."""
    shared = set.intersection(*({p["step"] for p in r["points"]} for r in runs))
    return max(shared) if shared else min(r["points"][-1]["step"] for r in runs)


def ablation_runs(runs: list[dict]) -> list[dict]:
    """The DiG runs of ``runs`` (one size), the model as the zoo defines it first, then the ablations
    by label; ``[]`` when none of them is an ablation."""
    dig = sorted((r for r in runs if r["kind"] == "DiG"),
                 key=lambda r: (bool(ablation_opts(r)), r["label"], r["seed"]))
    return dig if any(ablation_opts(r) for r in dig) else []


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _img_s(runs: list[dict]) -> str:
    """The runs' mean training rate (img/s), as the tables print it."""
    return f"{np.mean([r.get('img_per_s', float('nan')) for r in runs]):.0f}"


def _scores(p: dict) -> list[str]:
    return [f"{100 * p['accuracy']:.1f}%", f"{p['fd']:.2f} ({p['fd_real_halves']:.2f})", f"{p['precision']:.3f}",
            f"{p['recall']:.3f}"]


MEAN_KEYS = ("step", "accuracy", "fd", "fd_real_halves", "precision", "recall")


def mean_point(points: list[dict]) -> dict:
    """The mean over seeds of the numbers a table row shows (GPU minutes included)."""
    mean = {k: float(np.mean([p[k] for p in points])) for k in MEAN_KEYS}
    return mean | {"gpu_seconds": 60 * float(np.mean([gpu_minutes(p) for p in points]))}


def _by_label(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict = {}
    for r in runs:
        groups.setdefault(r["label"], []).append(r)
    return groups


def _rows_with_means(runs: list[dict], pick, cells) -> list[str]:
    """One row per run, ``cells(run, seed, point, group)`` with ``point = pick(run)`` (runs where it is
    None left out); after each group of runs that share a label and have two or more such points,
    their mean as a row: ``cells(first run, "mean of N", mean_point(points), group)``."""
    lines = []
    for group in _by_label(runs).values():
        picked = [(r, pick(r)) for r in group]
        picked = [(r, p) for r, p in picked if p is not None]
        lines += [_row(cells(r, r["seed"], p, [r])) for r, p in picked]
        if len(picked) > 1:
            rs, ps = [r for r, _ in picked], [p for _, p in picked]
            lines.append(_row(cells(rs[0], f"mean of {len(ps)}", mean_point(ps), rs)))
    return lines


def fd_by_minute(runs: list[dict]) -> list[str]:
    """Markdown rows: the FD of every run (and each label's mean over seeds) at every whole GPU
    minute that all of them reached (each run's last evaluation at or within 1% past it)."""
    groups = _by_label(runs)
    columns = [f"{r['label']} {r['seed']}" for r in runs] + [f"{label} mean" for label, g in groups.items()
                                                              if len(g) > 1]
    lines = [_row(["GPU min", *columns]), "|---" * (1 + len(columns)) + "|"]
    for minute in range(1, int(min(gpu_minutes(r["points"][-1]) for r in runs) * 1.01) + 1):
        fd = {id(r): (p["fd"] if (p := at_or_before(r["points"], gpu_minutes, minute)) else float("nan"))
              for r in runs}
        means = [np.mean([fd[id(r)] for r in g]) for g in groups.values() if len(g) > 1]
        lines.append(_row([minute, *(f"{fd[id(r)]:.1f}" for r in runs), *(f"{m:.1f}" for m in means)]))
    return lines


def table(runs: list[dict]) -> str:
    """Markdown. Per size, the DiG vs DiT runs: each run's last point, then all of them at the largest
    GPU time they all reached (each run's last evaluation at or within 1% past it) and at
    ``common_step`` (each run's evaluation nearest it, ``nearest_step``, its step printed), with the
    mean over seeds after each label that has more than one; then the FD at every whole GPU minute.
    Then, per size with ablation runs (DiG with ``--model-opt``), the SREM ablation: every DiG run of
    that size, the plain one included, at their ``common_step`` (picked the same way), with means over
    seeds."""
    lines = []
    for size in sorted({r["image_size"] for r in runs}):
        rs = [r for r in runs if r["image_size"] == size and not ablation_opts(r)]
        if rs:
            lines += [f"\n### {size} px ({rs[0]['tokens']} tokens)\n",
                      "| run | seed | at | step | GPU min | img/s | accuracy | FD (floor) | precision | recall |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            t_common, s_common = min(gpu_minutes(r["points"][-1]) for r in rs), common_step(rs)
            for what, pick in (("end", lambda r: r["points"][-1]),
                               (f"GPU {t_common:.1f} min", lambda r: at_or_before(r["points"], gpu_minutes, t_common)),
                               (f"step {s_common}", lambda r: nearest_step(r["points"], s_common))):
                lines += _rows_with_means(rs, pick, lambda r, seed, p, group, what=what: [
                    r["label"], seed, what, f"{p['step']:.0f}", f"{gpu_minutes(p):.2f}", _img_s(group), *_scores(p)])
            lines += [f"\nFD at every GPU minute, {size} px:\n", *fd_by_minute(rs)]
        dig = ablation_runs([r for r in runs if r["image_size"] == size])
        if not dig:
            continue
        step = common_step(dig)
        lines += [f"\n### SREM ablation at {size} px, step {step}\n",
                  "| scan_schedule | dwconv | seed | step | img/s | accuracy | FD (floor) | precision | recall |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def cells(r, seed, p, group):
            opts = ablation_opts(r)
            return [opts.get("scan_schedule", "srem"), "on" if opts.get("dwconv", True) else "off", seed,
                    f"{p['step']:.0f}", _img_s(group), *_scores(p)]
        lines += _rows_with_means(dig, lambda r: nearest_step(r["points"], step), cells)
    return "\n".join(lines)


def _panels(plt, rs: list[dict], xaxes, colours: dict, title: str, path: Path) -> Path:
    """A figure of FD, accuracy and recall (columns) against each of ``xaxes`` (rows): every run a
    line (colour per label, style per seed), the real-vs-real floor dashed."""
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(len(xaxes), 3, figsize=(15, 4 * len(xaxes)), sharex="row", squeeze=False)
    for row, (xname, xof) in enumerate(xaxes):
        for col, (yname, ykey) in enumerate((("Fréchet distance (glyph features)", "fd"),
                                             ("class accuracy", "accuracy"), ("recall", "recall"))):
            ax = axes[row, col]
            for r in rs:
                xs = [xof(p) for p in r["points"]]
                ax.plot(xs, [p[ykey] for p in r["points"]], styles[r["seed"] % len(styles)], marker="o",
                        markersize=3, color=colours[r["label"]], label=f"{r['label']} seed {r['seed']}")
            floor = {"fd": "fd_real_halves", "recall": "recall_real_halves"}.get(ykey)
            if floor:
                ax.axhline(rs[0]["points"][-1][floor], color="grey", linestyle="--", linewidth=1, label="real vs real")
            if ykey == "fd":
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1.02)
            ax.set_xlabel(xname)
            ax.set_ylabel(yname)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(runs: list[dict], out_dir: str | Path) -> list[Path]:
    """Per size, ``glyphs_dig_vs_dit_<size>px.png``: the DiG vs DiT runs' FD, accuracy and recall
    against GPU minutes (top) and steps (bottom); and where there are ablation runs,
    ``glyphs_srem_ablation_<size>px.png``: every DiG run of that size against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    labels = sorted({r["label"] for r in runs})
    colours = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    by_time, by_step = ("GPU minutes (training)", gpu_minutes), ("steps", lambda p: p["step"])
    for size in sorted({r["image_size"] for r in runs}):
        rs = [r for r in runs if r["image_size"] == size]
        card = rs[0]["environment"].get("card") or "CPU"
        tokens = f"{size} px ({rs[0]['tokens']} tokens)"
        main = [r for r in rs if not ablation_opts(r)]
        if main:
            written.append(_panels(plt, main, (by_time, by_step), colours,
                                   f"Glyphs at {tokens}: DiG vs DiT, same recipe, {card}",
                                   Path(out_dir) / f"glyphs_dig_vs_dit_{size}px.png"))
        dig = ablation_runs(rs)
        if dig:
            written.append(_panels(plt, dig, (by_step,), colours,
                                   f"Glyphs at {tokens}: the SREM ablation of DiG at equal steps, {card}",
                                   Path(out_dir) / f"glyphs_srem_ablation_{size}px.png"))
    return written


# ----------------------------------------------------------------------------- command line
def parse_model_opt(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (``dwconv=false`` -> False, ``depth=4`` -> 4)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one model at one size for a budget, evaluating along the way")
    r.add_argument("--model", choices=list(MODELS), default="DiG", help="DiG (DiG-S/2) or DiT (DiT-S/2)")
    r.add_argument("--image-size", type=int, default=64, help="glyph resolution in pixels (64: 1,024 tokens)")
    r.add_argument("--minutes", type=float, default=6.0, help="training budget in minutes, evaluations left out "
                                                              "(0: no time limit, stop at --max-steps)")
    r.add_argument("--max-steps", type=int, default=0, help="stop at this step (0: none); for equal-step runs")
    r.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations (0: off)")
    r.add_argument("--eval-every-steps", type=int, default=0, help="also evaluate every N steps (0: off)")
    r.add_argument("--seed", type=int, default=0, help="training seed (weights, data order, noise)")
    r.add_argument("--model-opt", dest="model_opts", type=parse_model_opt, action="append", default=[],
                   metavar="KEY=VALUE", help="create_model option, e.g. scan_schedule=flip or dwconv=false")
    r.add_argument("--batch-size", type=int, default=0, help=f"global batch (default {RECIPE['global_batch_size']})")
    r.add_argument("--compile", choices=["none", "model", "blocks"], default=None,
                   help=f"torch.compile scope (default {RECIPE['compile']})")
    r.add_argument("--per-class", type=int, default=EVAL["per_class"], help="samples per class per evaluation")
    r.add_argument("--sample-execution", choices=["eager", "compile", "graph", "compile+graph"], default=None,
                   help="how the EMA network runs while sampling (default: compile+graph on a GPU, else eager)")
    r.add_argument("--sample-steps", type=int, default=EVAL["steps"], help="Euler steps per sample")
    r.add_argument("--device", default="auto")
    r.add_argument("--out-dir", default=str(DEFAULT_OUT), help="where the JSON and the grid go")
    r.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny models, 16 px, 6 steps")
    q = sub.add_parser("plot", help="figures and a Markdown table from the run JSONs of a folder")
    q.add_argument("--dir", default=str(DEFAULT_OUT), help="folder of run JSONs")
    q.add_argument("--out-dir", default=None, help="where the figures go (default: --dir)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.command == "plot":
        runs = load_runs(args.dir)
        if not runs:
            raise SystemExit(f"no run JSONs with points in {args.dir}")
        for path in plot(runs, args.out_dir or args.dir):
            print(f"wrote {path}")
        print(table(runs))
        return 0
    args.model_opts = dict(args.model_opts)
    if args.smoke:
        for key in ("image_size", "max_steps", "minutes", "eval_every", "eval_every_steps", "per_class",
                    "device"):
            setattr(args, key, SMOKE[key])
        args.sample_steps = SMOKE["sample_steps"]
    if args.max_steps == 1 or args.max_steps < 0:
        # the first step (compilation, the loader's start) is off the clock, so a run times steps 2, 3, ...
        raise SystemExit(f"--max-steps must be 0 (none) or at least 2, got {args.max_steps}")
    if not (args.minutes > 0 or args.max_steps > 0):
        raise SystemExit("give a budget: --minutes > 0 or --max-steps > 0")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
