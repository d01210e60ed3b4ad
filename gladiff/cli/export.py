"""`gladiff export`: a training run as a shareable model folder (safetensors + config.json + card)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's model as model.safetensors + config.json + README.md (Hub layout)",
        description="Export the newest valid checkpoint of a run folder (or one checkpoint file) as a model "
                    "folder: model.safetensors (EMA weights unless --raw-weights), config.json (model and every "
                    "option, data facts, objective and its options) and a README.md model card (training "
                    "config, steps, the run's evaluation numbers). gladiff sample, gladiff eval and "
                    "gladiff.from_pretrained read it; --push-to-hub publishes it. docs/sharing.md.")
    p.add_argument("run", help="a run folder (its newest valid checkpoint) or a checkpoint file")
    p.add_argument("out_dir", help="the model folder to write (new, empty, or an earlier export)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights, not the EMA")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None,
                   help="also upload the folder to this Hugging Face Hub repo (created if needed; needs a "
                        "token from huggingface-cli login or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gladiff.errors import UsageError
    from gladiff.hub import export_run, looks_like_hub_id, push_to_hub

    if args.push_to_hub is not None and not looks_like_hub_id(args.push_to_hub):
        raise UsageError(f"--push-to-hub needs a Hub repo id like owner/name, got {args.push_to_hub!r}")
    out = export_run(args.run, args.out_dir, use_ema=not args.raw_weights)
    print(f"wrote {out} (model.safetensors, config.json, README.md)")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0
