"""`gladiff models`: the zoo with parameters and forward GMACs per image."""
from __future__ import annotations

import json

from gladiff.errors import UsageError


def register(sub):
    p = sub.add_parser("models", help="list the model zoo with parameter counts and GMACs",
                       description="List DiG/DiT models with parameters and forward GMACs per image, split "
                                   "into linear/conv layers and the token mixer (counting rules: "
                                   "docs/architecture.md).")
    p.add_argument("--image-size", type=int, default=256, help="image resolution in pixels (default 256)")
    p.add_argument("--latent-factor", type=int, default=8, help="VAE downsampling factor (default 8; 1 = pixels)")
    p.add_argument("--in-channels", type=int, default=4, help="channels of the model input (default 4: SD-VAE latents)")
    p.add_argument("--num-classes", type=int, default=1000, help="label classes (default 1000)")
    p.add_argument("--filter", default="", help="only names containing this text, e.g. 'DiG' or '/2'")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from gladiff.models import list_models
    from gladiff.models.flops import model_summary

    for flag in ("image_size", "latent_factor", "in_channels", "num_classes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.image_size % args.latent_factor:
        raise UsageError(f"--image-size {args.image_size} is not divisible by --latent-factor {args.latent_factor}")
    names = [n for n in list_models() if args.filter in n]
    if not names:
        raise UsageError(f"no model name contains {args.filter!r}")
    rows = []
    for n in names:
        try:
            rows.append(model_summary(n, args.image_size, args.in_channels, args.num_classes, args.latent_factor))
        except ValueError as err:  # e.g. a latent size not divisible by this patch size
            rows.append({"name": n, "error": str(err)})
    if all("error" in r for r in rows):  # nothing to list: an error, not a table of errors
        raise UsageError(f"no model can be built for these settings: {rows[0]['name']}: {rows[0]['error']}")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"image {args.image_size}x{args.image_size} (latent /{args.latent_factor}, {args.in_channels} ch), "
          f"GMACs per image, one forward pass")
    print(f"{'model':<10} {'params':>13} {'trainable':>13} {'linear+conv':>12} {'mixer':>8} {'total':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<10} {r['error']}")
            continue
        print(f"{r['name']:<10} {r['params']:>13,} {r['trainable']:>13,} {r['gmacs_linear_conv']:>12.2f} "
              f"{r['gmacs_mixer']:>8.2f} {r['gmacs_total']:>8.2f}")
    print("mixer: attention 2*T^2*D per block; GLA chunked form (C=64); counting rules in docs/architecture.md")
    return 0
