"""`gladiff demo` (`make demo`): train a small DiG on the built-in digits, then sample it.

Writes ``RUN_DIR/grid.png`` (10 samples of each class, one class per column) and
``RUN_DIR/samples.npz`` (100 samples per class, ADM format), and, when the evaluation package is
present, the digit check (``RUN_DIR/score.json``: how often an independent classifier reads the
requested class). A second run reuses the finished (or continues an interrupted) training.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

# The recipe, chosen and measured on a 2-core CPU (see docs/training.md): a DiG-S/4 cut down to
# 4 blocks of width 128 (16x16 digits -> 16 tokens of 4x4 pixels), flow matching, AdamW 1e-3.
# configs/demo.yaml holds the same training values for `gladiff train --config`.
DEMO_TRAIN = dict(
    data="digits", image_size=16,
    model="DiG-S/4", model_opts=dict(depth=4, hidden_size=128, num_heads=2),
    objective="flow",
    steps=1500, global_batch_size=64, lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.995,
    log_every=100, ckpt_every=500, keep_ckpts=1, sample_every=0, tensorboard=False, seed=0,
)
DEMO_SAMPLE = dict(sampler="euler", steps=20, cfg_scale=2.0, seed=0, per_class=100, batch_size=250)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a small DiG on the built-in digits, then sample it (runs anywhere)",
        description="Train the demo DiG on the built-in digits on whatever this machine has, then write "
                    "RUN_DIR/grid.png and RUN_DIR/samples.npz (100 samples per class). Rerunning reuses "
                    "the finished training; --fresh starts over.")
    p.add_argument("--run-dir", default="runs/demo",
                   help="folder for the checkpoints, grid.png, samples.npz and score.json (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete RUN_DIR's checkpoints and train again")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEMO_TRAIN['steps']})")
    p.add_argument("--per-class", type=int, default=DEMO_SAMPLE["per_class"], help="samples per class")
    p.add_argument("--no-score", action="store_true", help="skip the digit classifier check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gladiff.sample import class_labels, load_trained, sample_images, write_outputs
    from gladiff.train import resolve_config, train
    from gladiff.train.parallel import Dist, pick_device

    t0 = time.perf_counter()
    run_dir = Path(args.run_dir)
    if args.fresh:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    overrides = {**DEMO_TRAIN, "run_dir": str(run_dir), "device": args.device, "resume": True}
    if args.steps is not None:
        overrides["steps"] = args.steps
    cfg = resolve_config(overrides=overrides)
    result = train(cfg)
    if result.stopped_by:
        print(f"demo interrupted ({result.stopped_by}); run it again to continue")
        return 1
    t_train = time.perf_counter() - t0

    device = pick_device(args.device)
    trained = load_trained(result.checkpoint, device=device)
    labels = class_labels(args.per_class * 10, 10, classes=range(10))
    s = DEMO_SAMPLE
    images, labels = sample_images(trained, labels, seed=s["seed"], batch_size=s["batch_size"],
                                   sampler=s["sampler"], steps=s["steps"], cfg_scale=s["cfg_scale"],
                                   dist=Dist(device=device))
    grid, npz = run_dir / "grid.png", run_dir / "samples.npz"
    write_outputs([npz], images, labels)
    write_outputs([grid], images, labels, grid_count=100, nrow=10)
    t_total = time.perf_counter() - t0
    print(f"wrote {grid} and {npz} ({len(labels)} samples); training {t_train:.0f} s, "
          f"sampling {t_total - t_train:.0f} s, total {t_total:.0f} s")

    if not args.no_score:
        _score(run_dir, images, labels, t_train, t_total)
    return 0


def _score(run_dir: Path, images, labels, t_train: float, t_total: float) -> None:
    """The digit check: an independent classifier of the real digits reads each sample."""
    try:
        from gladiff.eval.digits import DigitScorer
    except ImportError as err:
        print(f"note: no digit check ({err})")
        return
    score = DigitScorer(image_size=images.shape[1]).score(images[..., 0], labels)
    score.update(train_seconds=round(t_train, 1), total_seconds_before_check=round(t_total, 1),
                 sampling={k: DEMO_SAMPLE[k] for k in ("sampler", "steps", "cfg_scale", "seed")})
    (run_dir / "score.json").write_text(json.dumps(score, indent=2) + "\n")
    print(f"digit check: {100 * score['accuracy']:.1f}% of the samples read as the requested class; "
          f"Frechet distance {score['fd']:.2f} (real vs real at this size: {score['fd_real_halves']:.2f})")
