"""Checkpoints of the authors' code as gladiff model folders: DiG (github.com/hustvl/DiG) and DiT
(github.com/facebookresearch/DiT).

Both save either a plain state dict (DiT's released ``DiT-XL-2-256x256.pt``) or their training
record ``{"model", "ema", "opt", "args"}``. The file is read with ``torch.load(weights_only=True)``
(``argparse.Namespace`` allowed, for ``args``): nothing in it can run code. The model is inferred
from the shapes; the names map one to one, the values are copied unchanged:

===================================  ====================================  =======
official                             gladiff                               where
===================================  ====================================  =======
``x_embedder.proj.{weight,bias}``    ``x_embedder.{weight,bias}``          both
``blocks.i.dw_conv.*``               ``blocks.i.dwconv.*``                 DiG
``blocks.i.attn.g_norm_swish_gate``  ``blocks.i.attn.g_norm_weight``       DiG
``.weight`` (or ``attn.g_norm``)
everything else                      the same name                         both
===================================  ====================================  =======

(a ``module.`` or ``_orig_mod.`` prefix from DDP / ``torch.compile`` is dropped.) DiG's code flips the
token sequence after every block and transposes the grid after every odd block, convolving on that
physical grid; gladiff keeps raster order and turns the scan and the stored kernel instead
(``gladiff.models.dig``), so the same state dict gives the same function and nothing is permuted.

What cannot be read from shapes: DiT's number of heads (taken from ``args.model`` when the record
has it, else from the zoo size with the same depth and width, else ``num_heads``), and DiG's scan
schedule (``args.model``: ``...-qdir`` is SREM's four directions, without it the per-block flip;
default SREM, the released design). DiG variants gladiff does not implement (U-Net skips, RMS
norms in the blocks, short convolutions) are refused by name.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from gladiff.errors import UsageError

from .card import model_card
from .folder import check_out_dir, file_sha256, save_pretrained

KINDS = ("dig-official", "dit-official")
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
_PREFIXES = ("module.", "_orig_mod.")
_RENAMES = {
    "dig-official": [(r"^x_embedder\.proj\.", "x_embedder."), (r"\.dw_conv\.", ".dwconv."),
                     (r"\.attn\.g_norm_swish_gate\.weight$", ".attn.g_norm_weight"),
                     (r"\.attn\.g_norm\.weight$", ".attn.g_norm_weight")],
    "dit-official": [(r"^x_embedder\.proj\.", "x_embedder.")],
}
# Official DiG parts with no gladiff counterpart: (pattern, what it is).
_UNSUPPORTED = [(r"\.skip_linear\.", "U-Net-style long skips (the ...-skip models)"),
                (r"\.(attn_norm|mlp_norm|norm1|norm2)\.weight$", "RMS norms inside the blocks (if_rms_norm)"),
                (r"\.(h_conv1d|q_conv1d|k_conv1d|v_conv1d)\.", "short convolutions in the GLA"),
                (r"\.g_norm_swish_gate\.bias$|\.g_norm\.bias$", "a bias in the GLA output norm")]


# ----------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, weights: str = "ema") -> tuple[dict, str, dict]:
    """``(state dict, which weights, args)`` of an official checkpoint: the ``weights`` (``"ema"``
    or ``"model"``) of a training record, or the plain state dict (``which`` is then ``"as
    released"``); ``args`` is the record's ``args`` as a dict (empty without)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        detail = " ".join(str(err).split())[:300]
        raise UsageError(f"{path} cannot be read as a PyTorch checkpoint of tensors ({type(err).__name__}: "
                         f"{detail}); it may be truncated, or it asks to run code, which is refused") from err
    if not isinstance(loaded, dict) or not loaded:
        raise UsageError(f"{path} holds {type(loaded).__name__}, not a state dict or a training record")
    args = vars(loaded["args"]) if isinstance(loaded.get("args"), argparse.Namespace) else \
        dict(loaded.get("args") or {}) if isinstance(loaded.get("args"), dict) else {}
    if "ema" in loaded or "model" in loaded:
        if weights not in loaded:
            raise UsageError(f"{path} has no {weights!r} weights (it has {', '.join(k for k in loaded if isinstance(loaded[k], dict))})")
        state, which = loaded[weights], weights
    else:
        state, which = loaded, "as released"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: the {which} weights are not a mapping of names to tensors")
    return dict(state), which, args


# ----------------------------------------------------------------------------- mapping
def to_gladiff_names(kind: str, state: dict) -> dict:
    """The official state dict under gladiff's names (values unchanged); parts gladiff does not
    implement are a ``UsageError`` naming them."""
    out = {}
    for name, value in state.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        for pattern, what in _UNSUPPORTED:
            if kind == "dig-official" and re.search(pattern, name):
                raise UsageError(f"the checkpoint has {name}: {what}, a DiG variant gladiff does not implement")
        for pattern, repl in _RENAMES[kind]:
            name = re.sub(pattern, repl, name)
        if name in out:
            raise UsageError(f"two tensors of the checkpoint map to {name}")
        out[name] = value
    return out


def _shape(state: dict, name: str, kind: str) -> tuple[int, ...]:
    if name not in state:
        family = "DiG" if kind == "dig-official" else "DiT"
        raise UsageError(f"the checkpoint has no {name}: not a {family} state dict of the official code "
                         f"(it has e.g. {sorted(state)[:3]})")
    return tuple(state[name].shape)


def infer_options(kind: str, state: dict, args: dict | None = None, *, num_heads: int | None = None,
                  scan_schedule: str | None = None) -> tuple[str, str, dict]:
    """``(family, name, options)`` of the gladiff model for a state dict under gladiff's names."""
    from gladiff.models.zoo import FAMILY_SIZE_OVERRIDES, PATCH_SIZES, SIZES

    args = args or {}
    family = "DiG" if kind == "dig-official" else "DiT"
    d, c, p, _ = _shape(state, "x_embedder.weight", kind)
    tokens = _shape(state, "pos_embed", kind)[1]
    grid = round(tokens ** 0.5)
    if grid * grid != tokens:
        raise UsageError(f"pos_embed has {tokens} positions, not a square grid: the official code builds square ones")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    rows = _shape(state, "y_embedder.embedding_table.weight", kind)[0]
    out = _shape(state, "final_layer.linear.weight", kind)[0] // (p * p)
    if out not in (c, 2 * c):
        raise UsageError(f"final_layer.linear gives {out} channels per pixel for {c} input channels")
    options = {"input_size": grid * p, "patch_size": p, "in_channels": c, "hidden_size": d, "depth": depth,
               "class_dropout_prob": 0.1, "num_classes": rows - 1, "learn_sigma": out == 2 * c}
    size = next((s for s, v in SIZES.items() if (v["depth"], v["hidden_size"]) == (depth, d)), None)
    official = str(args.get("model", ""))
    if family == "DiG":
        dv = _shape(state, "blocks.0.attn.g_norm_weight", kind)[0]
        k_dim = _shape(state, "blocks.0.attn.q_proj.weight", kind)[0]
        low = _shape(state, "blocks.0.attn.gk_proj.0.weight", kind)[0]
        if k_dim * 2 != d or _shape(state, "blocks.0.attn.v_proj.weight", kind)[0] != d or low != 16:
            raise UsageError(f"GLA sizes key {k_dim}, value {_shape(state, 'blocks.0.attn.v_proj.weight', kind)[0]}, "
                             f"gate rank {low} for width {d}: gladiff's GLA has expand_k 0.5, expand_v 1, rank 16")
        convs = {k.split(".")[1] for k in state if ".dwconv.weight" in k}
        if convs and len(convs) != depth:
            raise UsageError(f"{len(convs)} of {depth} blocks have a depth-wise conv: gladiff has it in all or none")
        if scan_schedule is None:
            scan_schedule = "srem" if ("qdir" in official or not official) else "flip"
        if "in-block" in official or args.get("if_in_block_conv"):
            raise UsageError("the checkpoint's conv runs inside the block (if_in_block_conv), a DiG variant "
                             "gladiff does not implement")
        options.update(num_heads=d // dv, scan_schedule=scan_schedule, dwconv=bool(convs),
                       dwconv_init="identity", intermediate_size=_shape(state, "blocks.0.mlp.gate_proj.weight", kind)[0] // 2)
    else:
        mlp_ratio = _shape(state, "blocks.0.mlp.fc1.weight", kind)[0] / d
        if num_heads is None:
            named = re.match(r"DiT-(S|B|L|XL)/", official)
            size_name = named.group(1) if named else size
            if size_name is None:
                raise UsageError(f"a DiT of depth {depth} and width {d} is no zoo size: the number of heads cannot "
                                 "be read from the weights; pass --num-heads")
            num_heads = {**SIZES[size_name], **FAMILY_SIZE_OVERRIDES.get((family, size_name), {})}["num_heads"]
        options.update(num_heads=num_heads, mlp_ratio=mlp_ratio)
    if num_heads is not None and family == "DiG" and num_heads != options["num_heads"]:
        raise UsageError(f"--num-heads {num_heads} disagrees with the weights' {options['num_heads']} heads")
    zoo = {**SIZES.get(size, {}), **FAMILY_SIZE_OVERRIDES.get((family, size), {})}
    name = (f"{family}-{size}/{p}" if size and p in PATCH_SIZES and zoo.get("num_heads") == options["num_heads"]
            else f"{family}-custom/{p}")
    return family, name, options


# ----------------------------------------------------------------------------- the whole conversion
def convert_official(kind: str, checkpoint: str | Path, out_dir: str | Path, *, weights: str = "ema",
                     vae: str | None = DEFAULT_VAE, num_heads: int | None = None,
                     scan_schedule: str | None = None) -> Path:
    """Write the official ``kind`` checkpoint as the gladiff model folder ``out_dir``; returns it.

    ``weights``: ``"ema"`` or ``"model"`` of a training record (a plain state dict is taken as it
    is). A 4-channel model is taken to work on SD-VAE latents (8x down-sampling, ``vae``); other
    channel counts on pixels. The objective is DiT's diffusion (DDPM, 1000 linear steps, learned
    sigma when the model outputs it), with gladiff's guidance of every channel (``guided_channels=3``
    reproduces the authors'; docs/sharing.md)."""
    from gladiff.diffusion import create_objective
    from gladiff.models.zoo import FAMILIES
    from gladiff.train.checkpoint import load_model_state

    if kind not in KINDS:
        raise UsageError(f"--from must be one of {', '.join(KINDS)}, got {kind!r}")
    if weights not in ("ema", "model"):
        raise UsageError(f"--weights must be ema or model, got {weights!r}")
    checkpoint = Path(checkpoint)
    check_out_dir(out_dir)
    state, which, args = read_checkpoint(checkpoint, weights)
    state = to_gladiff_names(kind, state)
    family, name, options = infer_options(kind, state, args, num_heads=num_heads, scan_schedule=scan_schedule)
    model = FAMILIES[family](**options)
    model.name = name
    try:
        load_model_state(model, {k: v.float() for k, v in state.items()}, what="converted checkpoint")
    except ValueError as err:
        raise UsageError(f"{checkpoint} does not convert to a gladiff {family}: {err}") from err
    latent = options["in_channels"] == 4
    size = options["input_size"]
    data = {"is_latent": latent, "vae": (vae or DEFAULT_VAE) if latent else None,
            "image_size": size * 8 if latent else size}
    source = {"kind": kind, "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
              "weights": which}
    if args.get("model"):
        source["official_model"] = str(args["model"])
    objective = create_objective("ddpm", learn_sigma=options["learn_sigma"])
    notes = [f"Converted with `gladiff convert --from {kind}`; the official names map one to one and the values are "
             "unchanged. Sampling differs from the authors' scripts in one respect: their `forward_with_cfg` guides "
             "only the first three latent channels (the fourth keeps the conditional prediction), gladiff guides "
             "all of them. Add `--objective-opt guided_channels=3` to `gladiff sample` to reproduce theirs."]
    return save_pretrained(model, out_dir, objective=objective, data=data, source=source,
                           card=lambda config: model_card(config, parameters=sum(v.numel() for v in state.values()),
                                                          notes=notes))
