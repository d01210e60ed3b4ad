"""`gladiff train` on pre-extracted latents, end to end through the CLI, against `gladiff bench`'s step.

    python benchmarks/train_vs_bench.py --out DIR [--model DiG-S/2] [--res 256] [--batch 256] \
        [--steps 200] [--compile blocks] [--num-workers auto]

Makes up ``--latents`` random latents in a temporary folder (the extraction format; no download),
runs ``python -m gladiff train`` on them for ``--steps`` steps, then ``python -m gladiff bench`` for the
same model, resolution and batch (training step, ``--bench-modes``, DiT left out). Prints and writes
``DIR/train_vs_bench_<card>_<model>_<res>_b<batch>.json``: the card and versions, both exact commands,
the run's steady img/s (median of the log windows of its second half), its warm-up (what the loop
took beyond the steps at that rate) and start-up (the rest of the wall time), bench's img/s per
mode, and the ratio to bench's mode of the same execution (``--compile none`` ~ ``eager``,
``blocks`` ~ ``compile[blocks]``, ``model`` ~ ``compile``; ``auto`` ~ what it chose). Issue 12's
target: ratio >= 0.9 once warm. ``--smoke`` runs a tiny model eagerly on the CPU (no bench: no GPU),
to test the script. Expected on an H200 with the defaults: about 2-3 minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment, write_json  # noqa: E402
from gladiff.bench.whole_run import (compile_choice, read_windows, run_command, steady_summary,  # noqa: E402
                                     train_command, write_synthetic_latents)

SMOKE_OPTS = ("depth=2", "hidden_size=32", "num_heads=1")
# The bench mode timing what a training run with this --compile executes.
BENCH_MODE = {"none": ("eager", None), "eager": ("eager", None), "blocks": ("compile", "blocks"),
              "model": ("compile", "model")}


def bench_command(args, out_json: Path) -> list[str]:
    family, size = args.model.split("-", 1)
    scopes = sorted({"blocks", "model"} & set(args.bench_scopes))
    return [sys.executable, "-m", "gladiff", "bench", "--models", size, "--families", family,
            "--res", str(args.res), "--batch", str(args.batch), "--no-default-batch", "--work", "train",
            "--modes", *args.bench_modes, "--compile-scope", *scopes, "--dit-attn", "cudnn",
            "--reps", str(args.reps), "--out", str(out_json)]


def bench_rates(bench_json: Path) -> dict[str, float]:
    """``{"eager": img/s, "compile[blocks]": img/s, ...}`` from a ``gladiff bench`` JSON."""
    from gladiff.bench.model import mode_label

    rows = json.loads(bench_json.read_text())["rows"]
    return {mode_label(r): r["img_s"] for r in rows if "img_s" in r}


def matching_mode(compile: str, chosen: str | None) -> str:
    """The bench mode label that times what the training run executed."""
    mode, scope = BENCH_MODE.get(chosen if compile == "auto" and chosen else compile, ("eager", None))
    return mode + (f"[{scope}]" if scope == "blocks" else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the JSON and the two commands' logs")
    p.add_argument("--model", default="DiG-S/2")
    p.add_argument("--res", type=int, default=256, help="image resolution (latents res/8)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--compile", default="blocks", help="the training run's --compile (auto none model blocks)")
    p.add_argument("--num-workers", default="auto")
    p.add_argument("--latents", type=int, default=4096, help="how many synthetic latents")
    p.add_argument("--bench-modes", nargs="+", default=["eager", "compile"])
    p.add_argument("--bench-scopes", nargs="+", default=["blocks"], help="compile scopes the bench tries")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, no bench (tests the script)")
    args = p.parse_args(argv)
    if args.smoke:  # eager: Inductor's CPU code generation would take minutes
        args.res, args.batch, args.steps, args.log_every, args.latents = 64, 8, 6, 2, 32
        args.compile = "none"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    card = (env.get("card") or "cpu").replace(" ", "_").replace("/", "_")
    tag = f"{card}_{args.model.replace('/', '')}_{args.res}_b{args.batch}"
    if not args.smoke and env.get("card") is None:
        print("train_vs_bench: no CUDA GPU on this machine; nothing measured (--smoke runs a CPU check).")
        return 0

    with tempfile.TemporaryDirectory(prefix="train_vs_bench_") as tmp:
        latents = write_synthetic_latents(Path(tmp) / "latents", args.latents, args.res)
        cmd = train_command(latents, Path(tmp) / "run", model=args.model, res=args.res, batch=args.batch,
                            steps=args.steps, compile=args.compile, num_workers=args.num_workers,
                            log_every=args.log_every, device="cpu" if args.smoke else "auto",
                            model_opts=SMOKE_OPTS if args.smoke else ())
        run = run_command(cmd, out / f"train_{tag}.log")
        windows = read_windows(Path(tmp) / "run")
    train = steady_summary(windows, args.batch, run["wall_s"])
    chosen = compile_choice(run["output"])
    print(f"gladiff train: {train['steady_img_s']:.1f} img/s once warm, warm-up {train['warmup_s']:.1f} s, "
          f"start-up {train['startup_s']:.1f} s, wall {train['wall_s']:.1f} s"
          + (f" (--compile auto chose {chosen})" if chosen else ""))

    bench, bench_cmd, ratio, mode = None, None, None, matching_mode(args.compile, chosen)
    if not args.smoke:
        bench_json = out / f"bench_{tag}.json"
        bench_cmd = bench_command(args, bench_json)
        run_command(bench_cmd, out / f"bench_{tag}.log")
        bench = bench_rates(bench_json)
        if mode in bench:
            ratio = train["steady_img_s"] / bench[mode]
        print("gladiff bench: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in bench.items()))
        print(f"train / bench[{mode}] = " + (f"{ratio:.3f} (target >= 0.9)" if ratio else "not measured"))
    path = write_json(out / f"train_vs_bench_{tag}.json", dict(
        environment=env, model=args.model, res=args.res, batch=args.batch, steps=args.steps,
        compile=args.compile, compile_chosen=chosen, num_workers=args.num_workers, latents=args.latents,
        train_command=" ".join(cmd), bench_command=" ".join(bench_cmd) if bench_cmd else None,
        train=train, train_windows=windows, bench_img_s=bench, bench_mode=mode, ratio=ratio, target=0.9))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
