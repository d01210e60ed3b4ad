"""`gladiff extract-latents`: encode an image folder into sharded SD-VAE latents for latent training.

Under ``torchrun --nproc_per_node=N -m gladiff extract-latents ...`` each process takes every N-th
shard on its own GPU (no process group is needed: the shards are independent).
"""
from __future__ import annotations

import argparse
import os

from gladiff.data.vae import DEFAULT_VAE
from gladiff.errors import UsageError, check_writable_dir


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract-latents",
        help="encode an image folder into VAE latent shards (resumable)",
        description="Encode ImageNet-style class folders with a diffusers AutoencoderKL into "
                    "sharded latents for `gladiff train --data latents:OUT`. Re-running the same "
                    "command resumes an interrupted extraction.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, metavar="imagefolder:PATH",
                   help="source images (ROOT/<class>/<image>); a bare PATH is accepted too")
    p.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    p.add_argument("--image-size", type=int, default=256, help="ADM centre-crop resolution (px)")
    p.add_argument("--vae", default=DEFAULT_VAE,
                   help="AutoencoderKL: local directory (save_pretrained layout) or hub id")
    p.add_argument("--flip", action="store_true",
                   help="also store the latent of each horizontally mirrored image")
    p.add_argument("--batch-size", type=int, default=64, help="images per VAE forward")
    p.add_argument("--shard-size", type=int, default=4096, help="source images per shard")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage type of the posterior mean/std")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda[:LOCAL_RANK] if available, else cpu)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader processes decoding images")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from gladiff.data.extract import extract_latents
    from gladiff.data.spec import KINDS, parse_data_spec

    # A bare folder path is accepted; anything naming a data kind is parsed as a spec.
    spec = args.data if args.data.partition(":")[0] in KINDS else f"imagefolder:{args.data}"
    kind, path = parse_data_spec(spec)
    if kind != "imagefolder":
        raise UsageError(f"--data must be imagefolder:PATH, got {args.data!r}")
    # What can be checked before the VAE is loaded and the images are encoded.
    for flag, least in (("image_size", 1), ("batch_size", 1), ("shard_size", 1), ("workers", 0)):
        if getattr(args, flag) < least:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= {least}, got {getattr(args, flag)}")
    check_writable_dir(args.out, "--out folder")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    m = extract_latents(path, args.out, image_size=args.image_size, vae=args.vae, flip=args.flip,
                        batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                        device=device, num_workers=args.workers, rank=rank, world_size=world,
                        progress=not args.no_progress)
    if m.get("complete"):
        print(f"{m['num_latents']} latents ({'with' if m['flip'] else 'no'} flipped copies) of "
              f"{m['num_files']} images in {len(m['shards'])} shards at {args.out}; "
              f"{m['num_skipped']} unreadable files skipped")
    else:
        print(f"rank {rank}: shards done; other ranks are still extracting into {args.out}")
    return 0
