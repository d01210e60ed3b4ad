"""Rebuilding a trained model (EMA weights by default), its objective and its decoder from a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gladiff.train import checkpoint as ckpt
from gladiff.train.build import build_model, build_objective


@dataclass
class Trained:
    """A model ready to sample: ``model`` (eval mode, on the device), ``objective``, the model
    ``spec``, the training ``data_info``, the run ``config`` and the ``step`` it was saved at."""

    model: torch.nn.Module
    objective: object
    spec: dict
    info: dict
    config: dict
    step: int
    path: Path

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.info["sample_size"]
        return (self.info["in_channels"], s, s)


def load_trained(path_or_run: str | Path, *, use_ema: bool = True, device="cpu",
                 objective: str | None = None, objective_opts: dict | None = None) -> Trained:
    """Load the newest valid checkpoint of a run folder (or the given file).

    ``objective``/``objective_opts`` replace the training objective's name/options (e.g. another
    number of diffusion steps); by default the training ones are used.
    """
    path = ckpt.resolve_checkpoint(path_or_run)
    state = ckpt.read_checkpoint(path)
    spec, cfg = state["model_spec"], state["config"]
    model = build_model(spec)
    ckpt.load_model_state(model, ckpt.model_weights(state, "ema" if use_ema else "model"),
                          what=f"checkpoint {path}")
    name = objective or cfg["objective"]
    opts = {**(cfg.get("objective_opts") or {}), **(objective_opts or {})} if name == cfg["objective"] \
        else dict(objective_opts or {})
    return Trained(model=model.to(device).eval().requires_grad_(False),
                   objective=build_objective(name, opts), spec=spec, info=state["data_info"],
                   config=cfg, step=int(state["step"]), path=path)


def make_decoder(info: dict, device, vae=None) -> Callable | None:
    """``None`` for pixel models; for latent models a function mapping scaled latents
    ``[B, C, h, w]`` to images ``[B, 3, H, W]`` in [-1, 1] through the VAE (``vae``: an
    ``AutoencoderKL``, a local path or hub id; default the one the latents were extracted with)."""
    if not info.get("is_latent"):
        return None
    from gladiff.data.vae import decode, load_vae

    if vae is None or isinstance(vae, (str, Path)):
        name = vae or info.get("vae")
        if not name:
            raise ValueError("this latent model's checkpoint names no VAE; pass --vae PATH_OR_HUB_ID")
        vae = load_vae(name, device=device)
    return lambda z: decode(vae, z)
