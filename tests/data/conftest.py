"""Fixtures for the data tests: tiny image folders and randomly initialised VAEs saved locally.

Nothing is downloaded: the VAEs are diffusers ``AutoencoderKL`` objects built from a config with
random weights, written with ``save_pretrained`` and loaded back by path.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # noqa: F401

from data_helpers import SD_VAE_CONFIG, SMALL_VAE_CONFIG, save_vae, write_images  # noqa: F401

# Belt and braces: no test may reach the Hugging Face hub (set before diffusers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture(scope="session")
def small_vae_dir(tmp_path_factory) -> Path:
    return save_vae(SMALL_VAE_CONFIG, tmp_path_factory.mktemp("vae") / "small")


@pytest.fixture(scope="session")
def sd_vae_dir(tmp_path_factory) -> Path:
    return save_vae(SD_VAE_CONFIG, tmp_path_factory.mktemp("vae") / "sd")


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """3 classes, 11 images of assorted shapes (landscape, portrait, smaller than 32 px)."""
    return write_images(tmp_path / "images", {
        "cat": [(40, 56), (64, 40), (24, 30), (32, 32)],
        "ant": [(48, 48), (36, 70), (33, 33)],
        "dog": [(50, 40), (80, 64), (20, 20), (40, 40)],
    })


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The VAE convolutions here are tiny: one thread (see tests/conftest.py); measured 0.3 s vs
    2-5 s per extraction on a shared 2-core box."""
