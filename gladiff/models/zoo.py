"""The model zoo as data: DiG and DiT at sizes S/B/L/XL with patch 2/4/8."""
from __future__ import annotations

import difflib
import inspect

from .backbone import DiffusionTransformer
from .dig import DiG
from .dit import DiT

FAMILIES = {"DiG": DiG, "DiT": DiT}
# depth, hidden size, heads (DiG-XL uses 18 heads so every DiG has dk 32 / dv 64).
SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
FAMILY_SIZE_OVERRIDES = {("DiG", "XL"): dict(num_heads=18)}
PATCH_SIZES = (2, 4, 8)


def model_config(name: str) -> tuple[type[DiffusionTransformer], dict]:
    """``"DiG-S/2"`` -> ``(DiG, {depth, hidden_size, num_heads, patch_size})``."""
    try:
        family, rest = name.split("-", 1)
        size, patch = rest.split("/")
        cls, cfg, patch = FAMILIES[family], dict(SIZES[size]), int(patch)
        if patch not in PATCH_SIZES:
            raise KeyError(patch)
    except (ValueError, KeyError):
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    cfg.update(FAMILY_SIZE_OVERRIDES.get((family, size), {}))
    cfg["patch_size"] = patch
    return cls, cfg


def list_models(family: str | None = None) -> list[str]:
    """All registered model names, e.g. ``["DiG-S/2", ...]``, optionally of one family."""
    return [f"{f}-{s}/{p}" for f in FAMILIES for s in SIZES for p in PATCH_SIZES
            if family is None or f == family]


def _accepted_options(cls) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if klass is DiffusionTransformer or issubclass(klass, DiffusionTransformer):
            names |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")}
    return names


def create_model(name: str, input_size=32, in_channels: int = 4, num_classes: int = 1000,
                 learn_sigma: bool = True, **overrides) -> DiffusionTransformer:
    """Build a zoo model by name.

    Args:
        name: ``"DiG-{S,B,L,XL}/{2,4,8}"`` or ``"DiT-{S,B,L,XL}/{2,4,8}"`` (see ``list_models()``).
        input_size: latent (or pixel) size the model is built for, int or ``(h, w)``.
        in_channels: channels of ``x`` (4 for SD-VAE latents).
        num_classes: number of classes; a null class is added for guidance.
        learn_sigma: output ``2 * in_channels`` channels (eps and the variance interpolation).
        **overrides: any constructor option, e.g. ``depth``, ``hidden_size``, ``num_heads``,
            ``class_dropout_prob``; DiG: ``scan_schedule``, ``dwconv``, ``dwconv_init``, ``gla_backend``,
            ``dwconv_backend``, ``intermediate_size``; DiT: ``mlp_ratio``.
    """
    cls, cfg = model_config(name)
    allowed = _accepted_options(cls)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown option(s) {unknown} for {name}; {hint}accepted: {sorted(allowed)}")
    cfg.update(overrides)
    model = cls(input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                learn_sigma=learn_sigma, **cfg)
    model.name = name
    return model
