"""Every sampler, driven by the exact denoiser of a 2-D Gaussian mixture, reproduces the mixture's moments.

N = 10,000 samples in float64. Tolerance: 0.03 absolute on each entry of the mean and of the covariance
(the data covariance is diag ~(0.58, 0.40)); the Monte-Carlo standard error at this N is ~0.008, so
this allows ~4 standard errors. Measured worst errors of the cases below: 0.014 (mean), 0.017 (cov).
Deliberately broken samplers miss by far more (measured): telling the model the respaced index instead
of the original timestep, or respacing by keeping the original betas instead of 1 - abar_t/abar_t',
moves the covariance by > 0.1 in every respaced case; DDIM with abar_t in place of abar_t' by 0.6.
(The learned-range interpolation hardly moves the moments at these step counts; the diffusers
trajectory comparison in test_gaussian_diffusion.py pins it exactly.)
"""
import pytest
import torch

from gladiff.diffusion import create_objective

N = 10_000
TOL = 0.03


def _check_moments(x, gmm):
    x = x.double()
    mean_err = (x.mean(0) - gmm.mean).abs().max().item()
    cov_err = (torch.cov(x.T) - gmm.cov).abs().max().item()
    assert mean_err < TOL and cov_err < TOL, f"mean error {mean_err:.4f}, covariance error {cov_err:.4f}"


DDPM_CASES = [
    # (objective options, sampler, steps, sampler options): full chains and respaced ones
    (dict(learn_sigma=True), "ddpm", 1000, {}),                           # no respacing, learned range
    (dict(learn_sigma=True), "ddpm", 250, {}),                            # the paper's sampling
    (dict(learn_sigma=False, beta_schedule="cosine"), "ddpm", 100, {}),   # fixed large, cosine
    (dict(learn_sigma=False, sigma_small=True), "ddpm", "ddim250", {}),   # fixed small, strided
    (dict(learn_sigma=True, num_timesteps=100), "ddim", 100, {}),         # no respacing (T = 100 chain)
    (dict(learn_sigma=False), "ddim", "ddim100", {}),                     # respaced, eta 0
    (dict(learn_sigma=True, beta_schedule="cosine"), "ddim", 50, {}),     # respaced, cosine
    (dict(learn_sigma=False), "ddim", 250, dict(eta=1.0)),                # respaced, stochastic
]


@pytest.mark.parametrize("options,sampler,steps,sampler_options", DDPM_CASES)
def test_ddpm_samplers_reproduce_mixture(oracles, gmm, options, sampler, steps, sampler_options):
    obj = create_objective("ddpm", **options)
    model = oracles["DDPMOracle"]({None: gmm}, num_timesteps=obj.num_timesteps,
                                  beta_schedule=obj.beta_schedule, learn_sigma=obj.learn_sigma)
    x = obj.sample(model, (N, 2), None, sampler=sampler, steps=steps, seed=0, dtype=torch.float64,
                   **sampler_options)
    assert x.shape == (N, 2) and x.dtype == torch.float64
    _check_moments(x, gmm)


@pytest.mark.parametrize("sampler,steps,expected_calls", [("euler", 100, 100), ("heun", 20, 40),
                                                          ("dopri5", None, None)])
def test_flow_samplers_reproduce_mixture(oracles, gmm, sampler, steps, expected_calls):
    obj = create_objective("flow")
    model = oracles["FlowOracle"]({None: gmm})
    x = obj.sample(model, (N, 2), None, sampler=sampler, steps=steps, seed=0, dtype=torch.float64)
    assert x.shape == (N, 2) and x.dtype == torch.float64
    if expected_calls is not None:
        assert len(model.calls) == expected_calls
    _check_moments(x, gmm)


def test_oracle_is_the_exact_denoiser(oracles, gmm):
    """Sanity check of the test's own oracle: its epsilon is E[noise | x_t] (Monte Carlo regression
    on forward samples: residuals are uncorrelated with x_t), and the flow velocity at t = 0 is -x."""
    g = torch.Generator().manual_seed(11)
    x0 = gmm.sample(200_000, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    abar = 0.3
    xt = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * noise
    eps, x0_hat, cov = gmm.posterior(xt, abar ** 0.5, (1 - abar) ** 0.5)
    # E[noise - eps*(x_t)] = 0 and E[(noise - eps*) * f(x_t)] = 0 for any f; check f = 1, x, x^2
    resid = noise - eps
    for f in (torch.ones_like(xt), xt, xt ** 2):
        assert (resid * f).mean(0).abs().max() < 0.01
    torch.testing.assert_close(x0_hat, (xt - (1 - abar) ** 0.5 * eps) / abar ** 0.5)
    assert ((x0 - x0_hat) ** 2).mean(0).sub(cov.mean(0)).abs().max() < 0.01
    v = oracles["FlowOracle"]({None: gmm})(xt, torch.zeros(len(xt), dtype=torch.float64), None)
    torch.testing.assert_close(v, -xt, rtol=1e-10, atol=1e-10)
