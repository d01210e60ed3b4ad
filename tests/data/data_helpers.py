"""Helpers shared by the data tests (a module of its own: several test folders have a conftest.py,
so importing from "conftest" would be ambiguous)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The real Stable Diffusion VAE architecture (sd-vae-ft-ema's config): ~83.7M parameters.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                     block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
                     down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256,
                     scaling_factor=0.18215)
# Same class and the same 8x downsampling with narrow blocks, for the many fast tests.
SMALL_VAE_CONFIG = dict(SD_VAE_CONFIG, block_out_channels=(32, 32, 32, 32), layers_per_block=1)


def save_vae(config: dict, path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    with torch.no_grad():  # random init leaves logvar ~ 0; make the posterior std vary a little
        vae.quant_conv.bias[4:].uniform_(-1.0, 0.5)
    vae.save_pretrained(path)
    return path


def write_images(root: Path, layout: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    """Random-noise PNGs: ``layout`` maps class name -> list of (height, width)."""
    rng = np.random.default_rng(seed)
    for name, sizes in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, (h, w) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"img{j:03d}.png")
    return root


def corrupt_files(class_dir: Path) -> list[Path]:
    """Add a garbage .jpg and a truncated .png (valid header, half the data) to ``class_dir``."""
    garbage = class_dir / "zz_garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    truncated = class_dir / "zz_truncated.png"
    arr = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return [garbage, truncated]
