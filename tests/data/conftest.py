"""Fixtures for the data tests: tiny image folders and randomly initialised VAEs saved locally.

Nothing is downloaded: the VAEs are diffusers ``AutoencoderKL`` objects built from a config with
random weights, written with ``save_pretrained`` and loaded back by path.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Belt and braces: no test may reach the Hugging Face hub (set before diffusers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


@pytest.fixture(scope="session")
def small_vae_dir(tmp_path_factory) -> Path:
    return save_vae(SMALL_VAE_CONFIG, tmp_path_factory.mktemp("vae") / "small")


@pytest.fixture(scope="session")
def sd_vae_dir(tmp_path_factory) -> Path:
    return save_vae(SD_VAE_CONFIG, tmp_path_factory.mktemp("vae") / "sd")


def write_images(root: Path, layout: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    """Random-noise PNGs: ``layout`` maps class name -> list of (height, width)."""
    rng = np.random.default_rng(seed)
    for name, sizes in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, (h, w) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"img{j:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """3 classes, 11 images of assorted shapes (landscape, portrait, smaller than 32 px)."""
    return write_images(tmp_path / "images", {
        "cat": [(40, 56), (64, 40), (24, 30), (32, 32)],
        "ant": [(48, 48), (36, 70), (33, 33)],
        "dog": [(50, 40), (80, 64), (20, 20), (40, 40)],
    })


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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The VAE convolutions here are tiny: one thread is faster than two on a shared 2-core box,
    where OpenMP workers spin against other processes (measured 0.3 s vs 2-5 s per extraction)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
