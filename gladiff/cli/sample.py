"""`gladiff sample`: images from a trained checkpoint, as a PNG grid and/or an ADM ``.npz``."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from gladiff.cli.train import int_or_str
from gladiff.errors import UsageError
from gladiff.models import COMPILE_SCOPES
from gladiff.sample.graphed import EXECUTION_CHOICES
from gladiff.train.config import parse_key_values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="sample a trained checkpoint to a PNG grid / .npz (also under torchrun)",
        description="Sample class-conditional images from a checkpoint (EMA weights unless --raw-weights). "
                    "The images for a seed depend on --seed and --batch-size only, not on the number of "
                    "processes: `torchrun --nproc_per_node=N -m gladiff sample ...` splits the batches.")
    p.add_argument("checkpoint", help="a checkpoint file, a run folder (its newest valid checkpoint), a model "
                                      "folder (gladiff export / convert / save_pretrained) or a Hugging Face "
                                      "Hub id owner/name")
    p.add_argument("--out", action="append", required=True,
                   help="output path, repeatable: *.npz (all samples, arr_0 uint8 [N,H,W,C], arr_1 "
                        "int64 labels), *.png (grid of the first --grid-count samples) or DIR/ (a new or "
                        "empty folder of one PNG per sample, 000012_class7.png: what FID tools read)")
    n = p.add_mutually_exclusive_group()
    n.add_argument("--num-samples", type=int, default=None, help="number of samples (default 100)")
    n.add_argument("--per-class", type=int, default=None,
                   help="this many samples of every class in --classes (or of every class)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class indices, repeated in order (default: random classes, "
                        "or all classes with --per-class)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise and of random classes (default 0); the samples depend on it and "
                        "--batch-size only")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (per process)")
    p.add_argument("--sampler", default=None, help="sampler of the objective (default: the objective's)")
    p.add_argument("--steps", default=None, type=int_or_str,
                   help="sampler steps, e.g. 250 or ddim50 (default: the objective's)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--objective-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="override an option of the training objective (repeatable)")
    p.add_argument("--raw-weights", action="store_true", help="sample the raw weights, not the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision of the model while sampling (default auto: bf16 on a CUDA "
                        "GPU that has it, else fp32; fp32 opts out)")
    p.add_argument("--execution", default="auto", choices=EXECUTION_CHOICES,
                   help="how the network runs: eager, compile (torch.compile), graph (each network pass "
                        "replayed from a CUDA graph) or compile+graph; auto (default): eager on a CPU; on "
                        "a GPU the first passes run eager and timed, then whichever of eager, graph and "
                        "compile+graph the rest of the run pays back (docs/training.md). The samples are "
                        "the same up to floating-point reassociation under compile")
    p.add_argument("--compile-scope", default="model", choices=COMPILE_SCOPES,
                   help="what --execution compile / compile+graph compiles: model (the whole network in one "
                        "graph, fuses across blocks; compile time grows with depth) or blocks (each block "
                        "compiled on its own: one graph per distinct block, seconds at any depth)")
    p.add_argument("--vae", default=None, help="latent models: the VAE (local folder or hub id) to decode "
                                               "with (default: the one recorded at extraction)")
    p.add_argument("--grid-count", type=int, default=100, help="samples shown in a .png grid")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: one per class "
                                                          "listed, else about square)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gladiff.sample import (check_outputs, class_labels, load_trained, make_decoder, sample_images,
                                write_outputs)
    from gladiff.train import parallel
    from gladiff.train.precision import Precision

    # What can be checked before the model is loaded and the samples are computed.
    for flag in ("batch_size", "num_samples", "per_class", "grid_count"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    classes = _parse_classes(args.classes)
    check_outputs(args.out)
    dist = parallel.init_distributed(args.device)
    held = contextlib.ExitStack()
    try:
        held.enter_context(_run_folder_lock(args.checkpoint, args.out, dist))
        trained = load_trained(args.checkpoint, use_ema=not args.raw_weights, device=dist.device,
                               objective_opts=parse_key_values(args.objective_opt))
        check_sampler(trained.objective, args.sampler, args.steps)
        k = trained.info["num_classes"]
        if args.per_class is not None:
            classes = classes if classes is not None else list(range(k))
            n = args.per_class * len(classes)
        else:
            n = args.num_samples if args.num_samples is not None else 100
        labels = class_labels(n, k, classes=classes, seed=args.seed)
        precision = Precision(args.precision, dist.device)
        decode = make_decoder(trained.info, dist.device, vae=args.vae)
        result = sample_images(trained, labels, seed=args.seed, batch_size=args.batch_size,
                               sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                               dist=dist, decode=decode, autocast=precision.autocast,
                               share_dir=Path(args.out[0]).parent, progress=not args.no_progress,
                               execution=args.execution, compile_scope=args.compile_scope)
        if dist.is_main:
            images, labels = result
            nrow = args.nrow or (len(classes) if classes and len(classes) <= 32 else None)
            for path in write_outputs(args.out, images, labels, args.grid_count, nrow):
                print(f"wrote {path}")
    finally:
        held.close()
        parallel.shutdown(dist)
    return 0


def _run_folder_lock(checkpoint: str, outs: list[str], dist):
    """The run folder's lock (``RunLock``) when an output lies inside the run folder sampled from, so
    that a trainer cannot start on that folder meanwhile, nor this while one runs; else (a model
    folder, outputs elsewhere) no lock."""
    from gladiff.hub.folder import is_model_folder
    from gladiff.train.checkpoint import run_dir_of
    from gladiff.train.run_lock import RunLock

    run_dir = run_dir_of(checkpoint).resolve()
    if (run_dir.is_dir() and not is_model_folder(run_dir)
            and any(run_dir in Path(o).resolve().parents for o in outs)):
        return RunLock(run_dir, dist)
    return contextlib.nullcontext()


def _parse_classes(text: str | None) -> list[int] | None:
    """``"3,7"`` -> ``[3, 7]``; None when not given."""
    if not text:
        return None
    parts = [c.strip() for c in text.split(",") if c.strip()]
    if not parts or not all(c.isdigit() for c in parts):
        raise UsageError(f"--classes must be comma-separated class indices such as 3,7, got {text!r}")
    return [int(c) for c in parts]


def check_sampler(objective, sampler: str | None, steps) -> None:
    """An unknown sampler or steps it cannot take is one line now, before any sampling (objectives
    without ``network_passes``, such as test stand-ins, are not checked)."""
    passes = getattr(objective, "network_passes", None)
    if passes is not None:
        passes(sampler, steps)
