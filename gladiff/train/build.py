"""From names to objects: the dataset, the objective and the model a config describes.

The model is described by a *spec* (plain dict) so a checkpoint can rebuild it without the data:
``{"name", "input_size", "in_channels", "num_classes", "learn_sigma", "overrides"}``. The data
facts the sampler needs (pixel or latent, which VAE) travel as ``data_info``.
"""
from __future__ import annotations

import torch

from .config import TrainConfig


def build_dataset(cfg: TrainConfig):
    """The training dataset of ``cfg.data`` at ``cfg.image_size``."""
    from gladiff.data import build_dataset as _build

    kwargs = {} if cfg.random_flip is None else {"random_flip": cfg.random_flip}
    return _build(cfg.data, cfg.image_size, **kwargs)


def build_objective(name: str, opts: dict | None = None):
    """``create_objective(name, **opts)`` from ``gladiff.diffusion``."""
    from gladiff.diffusion import create_objective

    return create_objective(name, **(opts or {}))


def data_info(dataset) -> dict:
    """What sampling needs to know about the training data (plain data, stored in checkpoints)."""
    is_latent = bool(getattr(dataset, "is_latent", False))
    return {
        "num_classes": int(dataset.num_classes),
        "in_channels": int(dataset.in_channels),
        "sample_size": int(dataset.sample_size),
        "image_size": int(getattr(dataset, "image_size", dataset.sample_size)),
        "is_latent": is_latent,
        "vae": str(dataset.vae) if is_latent and getattr(dataset, "vae", None) else None,
        "classes": [str(c) for c in getattr(dataset, "classes", range(dataset.num_classes))],
    }


def model_spec(cfg: TrainConfig, info: dict, learn_sigma: bool) -> dict:
    """The model spec of a run: zoo name, sizes from the data, overrides from the config."""
    return {
        "name": cfg.model,
        "input_size": info["sample_size"],
        "in_channels": info["in_channels"],
        "num_classes": info["num_classes"],
        "learn_sigma": bool(learn_sigma),
        "overrides": dict(cfg.model_opts),
    }


def build_model(spec: dict) -> torch.nn.Module:
    """``gladiff.create_model`` from a model spec."""
    from gladiff import create_model

    return create_model(spec["name"], input_size=spec["input_size"], in_channels=spec["in_channels"],
                        num_classes=spec["num_classes"], learn_sigma=spec["learn_sigma"],
                        **spec["overrides"])
