"""Beta schedules and respacing against closed forms and diffusers' schedulers."""
import math

import numpy as np
import pytest
import torch

from gladiff.diffusion import GaussianDiffusion, get_beta_schedule, space_timesteps


def test_linear_schedule_closed_form():
    for T in (1000, 250, 4000):
        betas = get_beta_schedule("linear", T)
        scale = 1000 / T
        expected = [scale * (1e-4 + i * (0.02 - 1e-4) / (T - 1)) for i in range(T)]
        assert betas.dtype == torch.float64 and betas.shape == (T,)
        np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-13, atol=0)


def test_cosine_schedule_closed_form():
    T = 1000
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    betas = get_beta_schedule("cosine", T)
    np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-12, atol=0)
    assert betas[-1] == 0.999  # the cap is active at the end
    # alpha_bar follows the cosine law f(t)/f(0) wherever the cap is inactive
    abar = torch.cumprod(1 - betas, 0).numpy()
    np.testing.assert_allclose(abar[:-1], [f((i + 1) / T) / f(0) for i in range(T - 1)], rtol=1e-10)


@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedules_match_diffusers(ours, theirs):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02)
    dif = GaussianDiffusion(get_beta_schedule(ours, 1000))
    # diffusers keeps float32 tables: agreement to float32 precision
    np.testing.assert_allclose(dif.betas.numpy(), sched.betas.double().numpy(), rtol=2e-6)
    np.testing.assert_allclose(dif.alphas_cumprod.numpy(), sched.alphas_cumprod.double().numpy(), rtol=2e-5)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown beta_schedule 'quadratic'.*linear, cosine"):
        get_beta_schedule("quadratic", 1000)


def test_space_timesteps_even():
    for T, n in [(1000, 250), (1000, 50), (1000, 1000), (100, 7), (1000, 1)]:
        kept = space_timesteps(T, n)
        expected = [0] if n == 1 else [round(i * (T - 1) / (n - 1)) for i in range(n)]
        assert kept == expected
        assert kept == space_timesteps(T, str(n))
    assert space_timesteps(1000, 250)[-1] == 999  # DiT's "250" visits the last training step


def test_space_timesteps_sections_and_ddim():
    # IDDPM's example: 300 steps in three sections of 100 taking 10, 15 and 20 steps.
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert [sum(lo <= k < lo + 100 for k in kept) for lo in (0, 100, 200)] == [10, 15, 20]
    assert kept[:2] == [0, 11] and kept[9] == 99 and kept[10] == 100 and kept[-1] == 299
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))


@pytest.mark.parametrize("spacing,n", [("leading", 50), ("linspace", 250), ("linspace", 37)])
def test_space_timesteps_match_diffusers(spacing, n):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(n)
    ours = space_timesteps(1000, f"ddim{n}" if spacing == "leading" else n)
    assert sorted(sched.timesteps.tolist()) == ours


@pytest.mark.parametrize("bad,msg", [("ddim400", "no integer stride"), ("0", "positive"), ("abc", "bad timestep"),
                                     ("600,600", "section 0 has 500"), ("ddim2000", "only 1000")])
def test_space_timesteps_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        space_timesteps(1000, bad)


def test_respaced_chain_keeps_marginals():
    dif = GaussianDiffusion(get_beta_schedule("linear", 1000))
    use = space_timesteps(1000, 25)
    short = dif.respace(use)
    assert short.num_timesteps == 25
    assert short.timestep_map.tolist() == use
    np.testing.assert_allclose(short.alphas_cumprod.numpy(), dif.alphas_cumprod[use].numpy(), rtol=1e-12)
    # beta'_k = 1 - abar(t_k) / abar(t_{k-1}), independently from the definition
    abar = dif.alphas_cumprod.numpy()
    prev = np.concatenate([[1.0], abar[use][:-1]])
    np.testing.assert_allclose(short.betas.numpy(), 1 - abar[use] / prev, rtol=1e-12)
