"""`gladiff convert`: a checkpoint of the authors' DiG or DiT code as a gladiff model folder."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from gladiff.hub.official import DEFAULT_VAE, KINDS
    from gladiff.models.dig import SCAN_SCHEDULES

    p = subparsers.add_parser(
        "convert", help="turn an official DiG (hustvl/DiG) or DiT (facebookresearch/DiT) checkpoint into a model folder",
        description="Convert a checkpoint of the official DiG or DiT code (a plain state dict such as DiT's "
                    "DiT-XL-2-256x256.pt, or a training record with ema/model weights) into a gladiff model folder "
                    "(model.safetensors, config.json, README.md). The model is inferred from the shapes; the "
                    "converted network computes the authors' function. docs/sharing.md.")
    p.add_argument("--from", dest="kind", required=True, choices=KINDS, help="whose code wrote the checkpoint")
    p.add_argument("checkpoint", help="the official .pt file")
    p.add_argument("out_dir", help="the model folder to write (new, empty, or an earlier conversion)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"),
                   help="of a training record {model, ema, opt, args}: the EMA (default) or the raw weights")
    p.add_argument("--vae", default=DEFAULT_VAE,
                   help=f"VAE recorded for a latent (4-channel) model (default {DEFAULT_VAE}; DiT's sample.py "
                        "uses stabilityai/sd-vae-ft-mse)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="DiT heads, when neither the record's args nor the zoo size give them (default: inferred)")
    p.add_argument("--scan-schedule", choices=SCAN_SCHEDULES, default=None,
                   help="DiG scan schedule (default: from the record's args.model, ...-qdir = srem; else srem)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gladiff.errors import UsageError
    from gladiff.hub import convert_official, read_config

    if args.num_heads is not None and args.num_heads < 1:
        raise UsageError(f"--num-heads must be >= 1, got {args.num_heads}")
    out = convert_official(args.kind, args.checkpoint, args.out_dir, weights=args.weights, vae=args.vae,
                           num_heads=args.num_heads, scan_schedule=args.scan_schedule)
    config = read_config(out)
    print(f"wrote {out}: {config['model']['name']} ({config['source']['weights']} weights), "
          f"{config['data']['num_classes']} classes")
    return 0
