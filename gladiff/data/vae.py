"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) that maps 256 px images to 32x32x4 latents.

Convention used everywhere in gladiff: the model sees *scaled* latents ``z = scale * latent`` with
``scale = vae.config.scaling_factor`` (0.18215 for the SD VAEs), which gives them roughly unit
variance. ``encode`` returns scaled latents and ``decode`` takes them.

diffusers is an optional dependency (``pip install gladiff[vae]``); it is imported only here.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from gladiff.errors import MissingDependencyError

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
VAE_SCALE = 0.18215  # the SD VAE's scaling_factor; the fallback when a config lacks one
DOWNSAMPLE = 8  # spatial reduction of the SD VAE: 256 px -> 32 latent


def load_vae(name_or_path: str | os.PathLike = DEFAULT_VAE, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32):
    """Load a frozen ``AutoencoderKL`` in eval mode from a local directory or a Hugging Face hub id.

    A local directory may hold the VAE itself (``config.json`` + weights, as written by
    ``save_pretrained``) or a full Stable Diffusion pipeline with the VAE in ``vae/``. A hub id is
    fetched by diffusers (the user's network and cache); a path that does not exist locally and
    does not look like ``owner/name`` is a ValueError.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise MissingDependencyError(f"the VAE {os.fspath(name_or_path)!r} (latent data) needs diffusers, which is "
                                     "not installed: pip install 'gladiff[vae]'") from err
    name = os.fspath(name_or_path)
    kwargs = {"torch_dtype": dtype}
    if importlib.util.find_spec("accelerate") is None:
        # Same behaviour diffusers falls back to, minus its "install accelerate" log line.
        kwargs["low_cpu_mem_usage"] = False
    path = Path(name).expanduser()
    if path.is_dir():
        name = str(path)
        if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
            kwargs["subfolder"] = "vae"
        elif not (path / "config.json").exists():
            raise ValueError(f"VAE directory {name!r} has no config.json (nor vae/config.json)")
    elif path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ValueError(f"VAE {name!r} is neither a local directory nor a hub id like "
                         f"{DEFAULT_VAE!r}")
    vae = AutoencoderKL.from_pretrained(name, **kwargs)
    return vae.to(device).eval().requires_grad_(False)


def vae_scale(vae) -> float:
    """The factor that turns raw latents into model inputs (``config.scaling_factor``)."""
    return float(getattr(vae.config, "scaling_factor", None) or VAE_SCALE)


@torch.no_grad()
def encode_posterior(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``x [B, 3, H, W]`` in [-1, 1] -> raw (unscaled) posterior ``(mean, std)``, each
    ``float32 [B, 4, H/8, W/8]``."""
    p = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return p.mean.float(), p.std.float()


@torch.no_grad()
def encode(vae, x: torch.Tensor, *, sample: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``x [B, 3, H, W]`` in [-1, 1] -> scaled latents ``float32 [B, 4, H/8, W/8]``.

    ``sample=True`` draws from the posterior (as DiT's training does), else returns its mean.
    """
    mean, std = encode_posterior(vae, x)
    z = mean
    if sample:
        z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
    return z * vae_scale(vae)


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``z [B, 4, h, w]`` -> images ``float32 [B, 3, 8h, 8w]`` clamped to [-1, 1]."""
    z = z.to(device=vae.device, dtype=vae.dtype) / vae_scale(vae)
    return vae.decode(z).sample.float().clamp_(-1, 1)
