"""Every sampler, driven by the exact denoiser of a 2-D Gaussian mixture, reproduces the mixture's moments.

N = 10,000 samples in float64. Tolerance: 0.03 absolute on each entry of the mean and of the covariance
(the data covariance is diag ~(0.58, 0.40)); the Monte-Carlo standard error at this N is ~0.008, so
this allows ~4 standard errors. Measured worst errors of the cases below: 0.014 (mean), 0.017 (cov).
Deliberately broken samplers miss by far more (measured): telling the model the respaced index instead
of the original timestep, or respacing by keeping the original betas instead of 1 - abar_t/abar_t',
moves the covariance by > 0.1 in every respaced case; DDIM with abar_t in place of abar_t' by 0.6.
(The learned-range interpolation hardly moves the moments at these step counts; the diffusers
trajectory comparison in test_gaussian_diffusion.py pins it exactly.)

The few-step samplers (DPM-Solver++ 2M and its SDE variant and UniPC through diffusers for DDPM;
midpoint and DPM-Solver++ 2M for flow) pass the same check at 20 steps or fewer, where DDIM and Euler
do not (measured covariance errors at 20 steps: DDIM 0.050, dpm++2m 0.008, unipc 0.004; flow at 10:
Euler 0.057, dpm++2m 0.010, midpoint 0.004), and are second order: against the exact ODE solution
their error falls about 4x when the steps double (Euler 2x).
"""
import sys

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
    (dict(learn_sigma=True), "dpm++2m", 20, {}),                          # diffusers, learned range
    (dict(learn_sigma=False, beta_schedule="cosine"), "dpm++2m", 20, {}),  # our cosine betas reach it
    (dict(learn_sigma=True), "dpm++2m-sde", 20, {}),
    (dict(learn_sigma=True), "unipc", 20, {}),
    (dict(learn_sigma=False, beta_schedule="cosine", num_timesteps=500), "unipc", 15, {}),
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
                                                          ("midpoint", 10, 20), ("dpm++2m", 10, 10),
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


@pytest.mark.parametrize("objective,sampler,second_order", [
    ("flow", "euler", False), ("flow", "heun", True), ("flow", "midpoint", True), ("flow", "dpm++2m", True),
    ("ddpm", "ddim", False), ("ddpm", "dpm++2m", True), ("ddpm", "unipc", True),
])
def test_few_step_samplers_are_second_order(oracles, gmm, objective, sampler, second_order):
    """Mean distance to the exact solution from the same noise (flow: dopri5 at 1e-10; DDPM: DDIM's
    deterministic chain through all 1000 steps) at 20 and 40 steps (flow) or 40 and 80 (DDPM, whose
    discrete chain needs more steps to reach the asymptotic regime). Measured ratios: Euler 1.9, DDIM
    1.9; heun 4.1, midpoint 5.0, dpm++2m 5.2 (flow), 3.9 (DDPM), unipc 3.6."""
    n = 500
    obj = create_objective(objective, **({} if objective == "flow" else dict(learn_sigma=True)))
    if objective == "flow":
        model = oracles["FlowOracle"]({None: gmm})
        exact = obj.sample(model, (n, 2), None, sampler="dopri5", seed=3, dtype=torch.float64, rtol=1e-10, atol=1e-10)
        coarse, fine = 20, 40
    else:
        model = oracles["DDPMOracle"]({None: gmm}, learn_sigma=True)
        exact = obj.sample(model, (n, 2), None, sampler="ddim", steps=1000, seed=3, dtype=torch.float64)
        coarse, fine = 40, 80
    errors = [(obj.sample(model, (n, 2), None, sampler=sampler, steps=k, seed=3, dtype=torch.float64) - exact)
              .abs().mean().item() for k in (coarse, fine)]
    ratio = errors[0] / errors[1]
    assert (ratio > 3.0) if second_order else (1.5 < ratio < 2.5), (errors, ratio)


def test_learned_variance_never_reaches_the_diffusers_solvers(oracles):
    """4-channel data with learned sigma (8 output channels): diffusers' own cut of the variance,
    model_output[:, :3], would fail here. The samples equal those of the fixed-variance model with the
    same epsilon, bit for bit, whatever the variance channels hold."""
    make = oracles["make_mixture"]
    eye = [[0.05 if i == j else 0.0 for j in range(4)] for i in range(4)]
    mix = make([0.5, 0.5], [[0.5, -0.5, 0.2, 0.0], [-0.4, 0.3, 0.0, 0.6]], [eye, eye])
    learned = oracles["DDPMOracle"]({None: mix}, learn_sigma=True)
    fixed = oracles["DDPMOracle"]({None: mix}, learn_sigma=False)

    def garbage_variance(x, t, y):
        out = learned(x, t, y)
        return torch.cat([out[:, :4], torch.rand_like(out[:, 4:]) * 2 - 1], dim=1)

    for sampler in ("dpm++2m", "dpm++2m-sde", "unipc"):
        a = create_objective("ddpm", learn_sigma=True).sample(learned, (64, 4), None, sampler=sampler, steps=8,
                                                              seed=5, dtype=torch.float64)
        b = create_objective("ddpm", learn_sigma=True).sample(garbage_variance, (64, 4), None, sampler=sampler,
                                                              steps=8, seed=5, dtype=torch.float64)
        c = create_objective("ddpm", learn_sigma=False).sample(fixed, (64, 4), None, sampler=sampler, steps=8,
                                                               seed=5, dtype=torch.float64)
        assert a.shape == (64, 4) and torch.equal(a, b) and torch.equal(a, c), sampler


def test_fast_samplers_steps_seeds_and_passes(oracles, gmm):
    ddpm, flow = create_objective("ddpm"), create_objective("flow")
    assert [ddpm.network_passes(s) for s in ("ddpm", "dpm++2m", "dpm++2m-sde", "unipc")] == [250, 20, 20, 20]
    assert [flow.network_passes(s) for s in ("heun", "midpoint", "dpm++2m")] == [100, 40, 20]
    assert ddpm.network_passes("unipc", "12") == 12
    model = oracles["DDPMOracle"]({None: gmm}, learn_sigma=True)
    sde = [ddpm.sample(model, (8, 2), None, sampler="dpm++2m-sde", steps=5, seed=s, dtype=torch.float64)
           for s in (1, 1, 2)]
    assert torch.equal(sde[0], sde[1]) and not torch.equal(sde[0], sde[2])  # its noise comes from the seed
    assert len(model.calls) == 15 and all(n == 8 for n in model.calls)
    # clip_denoised reaches them: the last step returns the clamped x_0 (the mixture reaches past 1)
    clipped, free = (create_objective("ddpm", clip_denoised=c).sample(model, (2000, 2), None, sampler="unipc",
                                                                      steps=10, seed=0, dtype=torch.float64)
                     for c in (True, False))
    assert clipped.abs().max() <= 1 + 1e-6 and free.abs().max() > 1.1  # (the schedulers step in float32)
    with pytest.raises(ValueError, match="takes a number of steps such as 20, got 'ddim50'"):
        ddpm.sample(model, (8, 2), None, sampler="dpm++2m", steps="ddim50")
    with pytest.raises(ValueError, match="exceeds the 1000 training timesteps"):
        ddpm.sample(model, (8, 2), None, sampler="unipc", steps=1001)
    with pytest.raises(ValueError, match="unknown sampler 'dpm\\+\\+3m' for objective 'ddpm'; valid: ddpm, ddim, "
                                         "dpm\\+\\+2m, dpm\\+\\+2m-sde, unipc"):
        ddpm.sample(model, (8, 2), None, sampler="dpm++3m")


def test_without_diffusers_the_fast_samplers_say_what_to_install(oracles, gmm, monkeypatch):
    from gladiff.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    model = oracles["DDPMOracle"]({None: gmm}, learn_sigma=True)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gladiff\[samplers\]'"):
        create_objective("ddpm").sample(model, (4, 2), None, sampler="dpm++2m", steps=3)
    x = create_objective("ddpm").sample(model, (4, 2), None, sampler="ddim", steps=3)  # the others still work
    assert x.shape == (4, 2)
