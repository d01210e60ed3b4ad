"""Forward process, posterior, reverse step and variational bound against closed forms and diffusers."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from gladiff.diffusion import GaussianDiffusion, create_objective, get_beta_schedule
from gladiff.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl

T = 1000


@pytest.fixture(scope="module")
def dif():
    return GaussianDiffusion(get_beta_schedule("linear", T))


def _bcast(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def test_forward_process_closed_form(dif):
    betas = get_beta_schedule("linear", T).tolist()
    abar, prod = [], 1.0
    for b in betas:  # alpha_bar by a plain running product
        prod *= 1 - b
        abar.append(prod)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    a = torch.tensor([abar[i] for i in t.tolist()], dtype=torch.float64)
    expected = _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise
    torch.testing.assert_close(dif.q_sample(x0, t, noise), expected, rtol=1e-13, atol=1e-13)
    mean, var, logvar = dif.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, _bcast(a.sqrt(), x0) * x0, rtol=1e-13, atol=0)
    torch.testing.assert_close(var.flatten(), 1 - a, rtol=1e-12, atol=0)
    torch.testing.assert_close(logvar.flatten(), (1 - a).log(), rtol=1e-12, atol=0)


def test_posterior_by_gaussian_conjugacy(dif):
    """q(x_{t-1} | x_t, x_0) from Bayes: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times the likelihood
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) -- precisions add, means are precision-weighted."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(1, T)
    x0 = torch.randn(T - 1, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(T - 1, 2, generator=g, dtype=torch.float64)
    beta = dif.betas[t]
    abar_prev = dif.alphas_cumprod[t - 1]
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var[:, None] * (abar_prev.sqrt()[:, None] * x0 / (1 - abar_prev)[:, None]
                           + (1 - beta).sqrt()[:, None] * xt / beta[:, None])
    got_mean, got_var, got_logvar = dif.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(got_mean, mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_var.flatten(), var, rtol=1e-9, atol=0)
    torch.testing.assert_close(got_logvar.flatten(), var.log(), rtol=1e-9, atol=0)
    # t = 0: the posterior is a point mass at x0 (its log-variance is clipped to t = 1's to stay finite)
    m0, v0, lv0 = dif.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    torch.testing.assert_close(m0, x0[:1], rtol=1e-12, atol=1e-14)
    assert v0.item() == 0 and lv0.item() == pytest.approx(math.log(var[0].item()))


def _float64_tables(sched):
    """diffusers keeps float32 tables (compared with ours in test_schedules); swap in float64 ones so the
    comparisons here test the formulas to float64 precision, not float32 table rounding."""
    betas = get_beta_schedule("linear", T)
    sched.betas, sched.alphas = betas, 1 - betas
    sched.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return sched


def _ddpm_scheduler(**kw):
    from diffusers import DDPMScheduler

    return _float64_tables(DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                         beta_end=0.02, clip_sample=False, **kw))


def test_posterior_mean_and_variances_match_diffusers(dif, monkeypatch):
    """DDPMScheduler.step with its noise zeroed returns the posterior mean with x0 predicted from eps."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda shape, **kw: torch.zeros(shape, dtype=kw.get("dtype")))
    sched = _ddpm_scheduler()
    g = torch.Generator().manual_seed(2)
    for t in (1, 2, 10, 400, 999):
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        out = sched.step(eps, t, x)
        tt = torch.full((2,), t)
        p = dif.p_mean_variance(eps, x, tt, learn_sigma=False)
        torch.testing.assert_close(p["pred_x0"], out.pred_original_sample, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(p["mean"], out.prev_sample, rtol=1e-10, atol=1e-10)
        # fixed variances: tilde_beta ("small") and beta ("large")
        small = dif.p_mean_variance(eps, x, tt, learn_sigma=False, sigma_small=True)["variance"]
        assert small.flatten()[0].item() == pytest.approx(sched._get_variance(t).item(), rel=1e-10)
        assert p["variance"].flatten()[0].item() == pytest.approx(
            sched._get_variance(t, variance_type="fixed_large").item(), rel=1e-10)
        # learned range: log-variance interpolation with v in [-1, 1]
        v = torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1
        learned = dif.p_mean_variance(torch.cat([eps, v], 1), x, tt, learn_sigma=True)["log_variance"]
        theirs = sched._get_variance(t, predicted_variance=v, variance_type="learned_range")
        torch.testing.assert_close(learned, theirs, rtol=1e-10, atol=1e-10)


def _eps_model(learn_sigma):
    """A fixed nonlinear, time-dependent stand-in network (timesteps on the 0..999 scale)."""
    def model(x, t, y):
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = 0.5 * torch.tanh(x) + 4e-4 * tt - 0.2
        if not learn_sigma:
            return eps
        return torch.cat([eps, torch.sin(x + tt / 100)], dim=1)
    return model


@pytest.mark.parametrize("learn_sigma,steps", [(False, 1000), (True, 1000), (True, "ddim50"), (False, "ddim20")])
def test_ancestral_trajectory_matches_diffusers(learn_sigma, steps):
    """The whole DDPM sampling chain, fed the same noise, equals diffusers' DDPMScheduler loop.

    diffusers' "leading" set_timesteps(N) walks t, t - 1000/N, ..., 0 with variances from abar ratios,
    which is exactly our "ddimN" respacing; its fixed_large / learned_range variances are DiT's."""
    sched = _ddpm_scheduler(variance_type="learned_range" if learn_sigma else "fixed_large")
    n = 1000 if steps == 1000 else int(steps[4:])
    sched.set_timesteps(n)
    shape = (2, 2, 2, 2)
    model = _eps_model(learn_sigma)
    obj = create_objective("ddpm", learn_sigma=learn_sigma)
    ours = obj.sample(model, shape, None, sampler="ddpm", steps=steps, seed=7, dtype=torch.float64)

    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for t in sched.timesteps:
        out = model(x, torch.full((shape[0],), float(t), dtype=torch.float64), None)
        x = sched.step(out, int(t), x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_trajectory_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    sched = _float64_tables(DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                          beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                                          steps_offset=0, timestep_spacing="leading"))
    sched.set_timesteps(50)
    shape = (2, 2, 2, 2)
    model = _eps_model(True)
    obj = create_objective("ddpm", learn_sigma=True)
    ours = obj.sample(model, shape, None, sampler="ddim", steps="ddim50", seed=3, dtype=torch.float64, eta=eta)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for t in sched.timesteps:
        out = model(x, torch.full((shape[0],), float(t), dtype=torch.float64), None)[:, :2]
        # our sampler draws noise only when it is used (eta > 0, not the last step)
        z = torch.randn(shape, generator=g, dtype=torch.float64) if eta > 0 and t > 0 else torch.zeros(shape)
        x = sched.step(out, int(t), x, eta=eta, variance_noise=z.double()).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


def test_vb_kl_term_matches_torch_distributions(dif):
    g = torch.Generator().manual_seed(4)
    B, C = 6, 2
    x0 = torch.rand(B, C, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = torch.cat([torch.randn(x0.shape, generator=g, dtype=torch.float64),
                     torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1], 1)
    t = torch.tensor([1, 2, 50, 500, 998, 999])
    got = dif.vb_terms_bpd(out, x0, xt, t, learn_sigma=True)
    # independent: posterior from the Bayes form above, KL from torch.distributions
    beta, abar_prev = _bcast(dif.betas[t], x0), _bcast(dif.alphas_cumprod[t - 1], x0)
    var_q = 1 / (1 / (1 - abar_prev) + (1 - beta) / beta)
    mean_q = var_q * (abar_prev.sqrt() * x0 / (1 - abar_prev) + (1 - beta).sqrt() * xt / beta)
    p = dif.p_mean_variance(out, xt, t, learn_sigma=True)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean_q, var_q.sqrt().expand_as(x0)),
                                           torch.distributions.Normal(p["mean"], p["variance"].sqrt()))
    expected = kl.reshape(B, -1).mean(1) / math.log(2)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    # the elementwise formula itself
    torch.testing.assert_close(normal_kl(mean_q, var_q.log(), p["mean"], p["log_variance"]), kl,
                               rtol=1e-8, atol=1e-12)


def test_vb_decoder_nll_at_t0_matches_scipy(dif):
    """L_0 = -log of the mass of x0's 1/127.5-wide bin under N(mean, var), outer bins open-ended."""
    g = torch.Generator().manual_seed(5)
    levels = torch.tensor([0, 1, 2, 100, 127, 128, 200, 253, 254, 255], dtype=torch.float64)
    x0 = (levels / 127.5 - 1).reshape(1, 1, 10, 1).repeat(2, 1, 1, 1)
    xt = dif.q_sample(x0, torch.tensor([0, 0]), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    out = torch.cat([torch.randn(x0.shape, generator=g, dtype=torch.float64) * 0.3,
                     torch.tensor([-1.0, 1.0], dtype=torch.float64).reshape(2, 1, 1, 1).expand_as(x0)], 1)
    t = torch.tensor([0, 0])
    got = dif.vb_terms_bpd(out, x0, xt, t, learn_sigma=True)
    p = dif.p_mean_variance(out, xt, t, learn_sigma=True)
    mean, std = p["mean"].numpy(), np.sqrt(p["variance"].expand_as(x0).numpy())
    x = x0.numpy()
    hi = np.where(levels.numpy()[None, None, :, None] == 255, np.inf, x + 1 / 255)
    lo = np.where(levels.numpy()[None, None, :, None] == 0, -np.inf, x - 1 / 255)
    mass = norm.cdf(hi, mean, std) - norm.cdf(lo, mean, std)
    expected = -np.log(mass).reshape(2, -1).mean(1) / math.log(2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7)
    direct = discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
    np.testing.assert_allclose(direct.numpy(), np.log(mass), rtol=1e-7)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_loss_finite_at_both_ends(learn_sigma):
    obj = create_objective("ddpm", learn_sigma=learn_sigma)
    g = torch.Generator().manual_seed(6)
    x0 = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0  # the open-ended decoder bins
    for t in (0, T - 1):
        for v in (-1.0, 0.0, 1.0):  # both ends of the learned variance range
            def model(x, tt, y):
                eps = torch.randn(x.shape, generator=g) * 3
                return torch.cat([eps, torch.full_like(x, v)], 1) if learn_sigma else eps
            out = obj.training_loss(model, x0, None, t=torch.full((4,), t))
            assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss_per_sample"]).all()


def test_hybrid_loss_terms_and_detached_mean():
    """loss = MSE(eps) + (T/1000) * L_vb where L_vb sees the eps channels detached."""
    obj = create_objective("ddpm", num_timesteps=2000, learn_sigma=True)
    g = torch.Generator().manual_seed(8)
    B = 6
    x0 = torch.rand(B, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 7, 900, 1500, 1999])
    raw = torch.randn(B, 4, 3, 3, generator=g, dtype=torch.float64)
    raw[:, 2:] = raw[:, 2:].tanh()
    out_param = raw.clone().requires_grad_(True)
    seen = {}

    def model(x, tt, y):
        seen["x"], seen["t"] = x, tt
        return out_param

    out = obj.training_loss(model, x0, None, t=t, noise=noise)
    # model inputs: x_t from q_sample and the integer timesteps as floats
    torch.testing.assert_close(seen["x"], obj.diffusion.q_sample(x0, t, noise), rtol=0, atol=0)
    assert seen["t"].dtype == torch.float64 and seen["t"].tolist() == t.tolist()
    mse = ((noise - raw[:, :2]) ** 2).reshape(B, -1).mean(1)
    vb = obj.diffusion.vb_terms_bpd(raw, x0, seen["x"], t, learn_sigma=True) * 2.0
    torch.testing.assert_close(out["mse"], mse, rtol=1e-12, atol=0)
    torch.testing.assert_close(out["vb"], vb.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["loss"], (mse + vb).mean(), rtol=1e-12, atol=0)
    # gradients: the eps channels get only the MSE gradient, the variance channels only L_vb's
    grad = torch.autograd.grad(out["loss"], out_param)[0]
    eps_only = raw.clone().requires_grad_(True)
    ((noise - eps_only[:, :2]) ** 2).reshape(B, -1).mean(1).mean().backward()
    torch.testing.assert_close(grad[:, :2], eps_only.grad[:, :2], rtol=1e-12, atol=1e-15)
    var_only = raw.clone().requires_grad_(True)
    frozen = torch.cat([raw[:, :2], var_only[:, 2:]], 1)
    (obj.diffusion.vb_terms_bpd(frozen, x0, seen["x"], t, learn_sigma=True) * 2.0).mean().backward()
    torch.testing.assert_close(grad[:, 2:], var_only.grad[:, 2:], rtol=1e-12, atol=1e-15)


def test_fixed_variance_loss_is_plain_mse():
    obj = create_objective("ddpm", learn_sigma=False)
    x0 = torch.zeros(3, 1, 2, 2)
    noise = torch.ones_like(x0)
    out = obj.training_loss(lambda x, t, y: torch.full_like(x, 0.5), x0, None, t=torch.tensor([0, 5, 999]),
                            noise=noise)
    assert out["mse"].tolist() == [0.25] * 3 and out["vb"].tolist() == [0.0] * 3
    assert out["loss"].item() == pytest.approx(0.25)
