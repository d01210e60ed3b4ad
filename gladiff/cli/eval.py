"""`gladiff eval`: score a batch of samples.

With ``--ref`` it runs the ADM suite (FID, sFID, Inception Score, precision, recall; needs the
Inception weights). Without it, digit samples (small grey images with labels 0..9, or ``--digits``)
get the built-in digit check (classifier accuracy and Fréchet distance; needs nothing), and glyph
samples (colour images, a multiple of 16 pixels square, with labels below the 49 glyph classes, or
``--glyphs``) get the built-in glyph check (accuracy, Fréchet distance, precision and recall; needs
nothing).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from gladiff.errors import UsageError, check_output_file, writing

DIGIT_MAX_SIZE = 64


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score samples: ADM metrics against a reference, or the built-in digit or glyph check",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="samples .npz (arr_0: uint8 [N, H, W, 3] or [N, H, W]; arr_1: labels) "
                                   "or, with --ref, a folder of images")
    p.add_argument("--ref", help="reference batch: an ADM reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz) "
                                 "or a folder of images")
    p.add_argument("--inception", help="FID Inception-v3 weights, pt_inception-2015-12-05-6726825d.pth "
                                       "(default: $GLADIFF_INCEPTION)")
    p.add_argument("--digits", action="store_true", help="run the built-in digit check (implied for digit samples "
                                                         "when --ref is not given)")
    p.add_argument("--glyphs", action="store_true", help="run the built-in glyph check (implied for glyph samples "
                                                         "when --ref is not given)")
    p.add_argument("--image-size", type=int, default=16, help="digit classifier resolution (default 16)")
    p.add_argument("--glyph-reference", type=int, default=None, metavar="N",
                   help="real glyph renders the glyph check may draw (default 10000): two sets of min(N, 5000), "
                        "one to compare the N samples with, one for the real-vs-real floor")
    p.add_argument("--batch-size", type=int, default=64, help="Inception batch size (default 64)")
    p.add_argument("--device", help="device for Inception features (default: cuda if available)")
    p.add_argument("--cache-dir", help="reference statistics cache (default ~/.cache/gladiff/eval)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def looks_like_digits(source) -> bool:
    """Small (<= 64 px) single-channel images with integer labels in 0..9 (grey RGB checked by caller)."""
    n, h, w, c = source.shape
    if h > DIGIT_MAX_SIZE or w > DIGIT_MAX_SIZE:
        return False
    labels = source.labels()
    return labels is not None and len(labels) > 0 and labels.min() >= 0 and labels.max() <= 9


def _digit_images(source) -> np.ndarray | None:
    """The samples as an array if they are grey (one channel, or three equal ones), else None."""
    images = source.load_all()
    if images.shape[-1] == 3 and not (np.array_equal(images[..., 0], images[..., 1])
                                      and np.array_equal(images[..., 0], images[..., 2])):
        return None
    return images


def looks_like_glyphs(source) -> bool:
    """Square three-channel images of a multiple of 16 pixels with integer labels below the number of
    glyph classes (checked after the digits: grey digit samples never get here)."""
    from gladiff.data.glyphs import NUM_CLASSES

    n, h, w, c = source.shape
    if c != 3 or h != w or h % 16:
        return False
    labels = source.labels()
    return labels is not None and len(labels) > 0 and labels.min() >= 0 and labels.max() < NUM_CLASSES


def run(args) -> int:
    from gladiff.eval.adm import ImageSource

    # What can be checked before the features are computed.
    for flag in ("batch_size", "image_size"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.json and args.json != "-":
        check_output_file(args.json, "--json file", example="results.json")
    if args.glyph_reference is not None and args.glyph_reference < 8:
        raise UsageError(f"--glyph-reference must be >= 8, got {args.glyph_reference}")
    if args.digits and args.glyphs:
        raise UsageError("--digits and --glyphs exclude each other: samples are one or the other")
    results: dict = {}
    source = ImageSource(args.samples)
    digits, glyphs, images = args.digits, args.glyphs, None
    if not (digits or glyphs) and args.ref is None:
        images = _digit_images(source) if looks_like_digits(source) else None
        digits = images is not None
        glyphs = not digits and looks_like_glyphs(source)
        if not (digits or glyphs):
            raise ValueError(f"{args.samples} looks like neither digit samples (small grey images with labels "
                             "0..9 in arr_1) nor glyph samples (colour images, a multiple of 16 px square, with "
                             "labels in arr_1); pass --ref REF for the ADM metrics, or --digits / --glyphs to "
                             "force a built-in check")
    if digits:
        from gladiff.eval.digits import DigitScorer

        images = source.load_all() if images is None else images
        scorer = DigitScorer(args.image_size, progress=not args.no_progress)
        results["digits"] = scorer.score(images, source.labels())
    if glyphs:
        from gladiff.eval.glyphs import DEFAULT_REFERENCE, GlyphScorer

        scorer = GlyphScorer(args.glyph_reference or DEFAULT_REFERENCE, progress=not args.no_progress)
        results["glyphs"] = scorer.score(source.load_all(), source.labels())
    if args.ref is not None:
        from gladiff.eval.adm import evaluate

        results["adm"] = evaluate(source, args.ref, inception=args.inception, batch_size=args.batch_size,
                                  device=args.device, cache_dir=args.cache_dir, progress=not args.no_progress)
    _print(results)
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            with writing("the results", args.json), open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


def _print(results: dict) -> None:
    if "digits" in results:
        r = results["digits"]
        acc = "n/a (no labels)" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        print(f"digit check on {r['n']} samples:")
        print(f"  classifier accuracy on requested classes: {acc}")
        print(f"  Fréchet distance to real digits:          {r['fd']:.4f}")
        print(f"  same distance, real vs real (two halves): {r['fd_real_halves']:.4f}")
    if "glyphs" in results:
        r = results["glyphs"]
        acc = "n/a (no labels)" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        print(f"glyph check on {r['n']} samples at {r['image_size']} px "
              f"(against {r['n_reference']} real renders; real vs real: {r['n_reference']} others):")
        print(f"  classifier accuracy on requested classes: {acc}")
        print(f"  Fréchet distance to real glyphs:          {r['fd']:.4f}   (real vs real {r['fd_real_halves']:.4f})")
        print(f"  precision:                                {r['precision']:.4f}   "
              f"(real vs real {r['precision_real_halves']:.4f})")
        print(f"  recall:                                   {r['recall']:.4f}   "
              f"(real vs real {r['recall_real_halves']:.4f})")
        if r["n"] <= 128:
            print("  (at most 128 samples for 128 features: the covariances are singular and the Fréchet "
                  "distance rough; score several hundred)", file=sys.stderr)
    if "adm" in results:
        r = results["adm"]
        print(f"ADM suite: {r['n_samples']} samples vs {r['n_reference']} reference images")
        print(f"  Inception Score: {r['inception_score']:.3f}")
        print(f"  FID:             {r['fid']:.4f}")
        print(f"  sFID:            {r['sfid']:.4f}")
        print(f"  Precision:       {r['precision']:.4f}")
        print(f"  Recall:          {r['recall']:.4f}")
        if r["n_samples"] < 50000:
            print("  (published numbers use 50,000 samples; FID and sFID are biased upward at fewer)",
                  file=sys.stderr)
