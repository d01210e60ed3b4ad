import pytest
import torch
from data_helpers import SD_VAE_CONFIG

from gladiff.data.vae import VAE_SCALE, decode, encode, encode_posterior, load_vae


def test_encode_decode_against_diffusers(small_vae_dir):
    vae = load_vae(small_vae_dir)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x).latent_dist
    mean, std = encode_posterior(vae, x)
    torch.testing.assert_close(mean, post.mean)
    torch.testing.assert_close(std, post.std)
    z = encode(vae, x, sample=False)
    assert z.shape == (2, 4, 4, 4)
    torch.testing.assert_close(z, VAE_SCALE * post.mean)
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(encode(vae, x, generator=g), VAE_SCALE * (post.mean + post.std * eps))
    with torch.no_grad():
        ref = vae.decode(z / VAE_SCALE).sample.clamp(-1, 1)
    img = decode(vae, z)
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    torch.testing.assert_close(img, ref)


def test_load_vae_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(tmp_path)
    with pytest.raises(ValueError, match="neither a local directory nor a hub id"):
        load_vae(tmp_path / "missing" / "vae")


def test_load_vae_from_pipeline_layout(tmp_path, small_vae_dir):
    import shutil

    shutil.copytree(small_vae_dir, tmp_path / "sd-pipeline" / "vae")
    vae = load_vae(tmp_path / "sd-pipeline")
    assert tuple(vae.config.block_out_channels) == (32, 32, 32, 32)


def test_real_sd_architecture(sd_vae_dir):
    vae = load_vae(sd_vae_dir)
    n = sum(p.numel() for p in vae.parameters())
    assert 83_000_000 < n < 84_000_000  # sd-vae-ft-ema has 83,653,863 parameters
    assert tuple(vae.config.block_out_channels) == SD_VAE_CONFIG["block_out_channels"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = encode(vae, x, sample=False)
    assert z.shape == (1, 4, 4, 4) and torch.isfinite(z).all()
    assert decode(vae, z).shape == (1, 3, 32, 32)
