"""Exact denoisers of 2-D Gaussian mixtures: the oracles the sampler tests integrate.

For data x0 ~ sum_k w_k N(mu_k, S_k) and x_t = a x0 + s n (n ~ N(0, I)) -- DDPM: a = sqrt(abar_t),
s = sqrt(1 - abar_t); linear flow: a = 1 - t, s = t -- each component stays Gaussian:
    x_t | k ~ N(a mu_k, C_k),  C_k = a^2 S_k + s^2 I,
and by Gaussian conditioning, with r = C_k^{-1} (x_t - a mu_k),
    E[n | x_t, k] = s r,   E[x0 | x_t, k] = mu_k + a S_k r,   Cov[x0 | x_t, k] = S_k - a^2 S_k C_k^{-1} S_k.
Mixing with the responsibilities p(k | x_t) proportional to w_k N(x_t; a mu_k, C_k) gives the MSE-optimal
predictions:
    epsilon*(x_t) = E[n | x_t]          (what the DDPM network should output),
    v*(x_t)      = E[n | x_t] - E[x0 | x_t]  (the flow velocity target noise - x0),
both finite for every t in [0, 1] including the ends (no division by a or s).
The learned-range oracle outputs the variance of the moment-matched reverse step
q(x_{t-1} | x_t) ~ N(., tilde_beta_t + coef1_t^2 Cov[x0 | x_t]) (diagonal), mapped into IDDPM's range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from gladiff.diffusion.schedules import get_beta_schedule


@dataclass
class Mixture:
    weights: torch.Tensor   # [K]
    means: torch.Tensor     # [K, d]
    covs: torch.Tensor      # [K, d, d]

    @property
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> torch.Tensor:
        m = self.mean
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[k] + (chol[k] @ z[:, :, None])[:, :, 0]

    def posterior(self, x: torch.Tensor, a: float, s: float):
        """E[n|x_t], E[x0|x_t] and diag Cov[x0|x_t] ([N, d] each) for x_t = x [N, d] at one level (a, s)."""
        d = x.shape[1]
        cov_t = a * a * self.covs + s * s * torch.eye(d, dtype=x.dtype)     # [K, d, d]
        prec = torch.linalg.inv(cov_t)
        diff = x[:, None, :] - a * self.means[None]                          # [N, K, d]
        r = torch.einsum("kij,nkj->nki", prec, diff)                         # C^{-1}(x - a mu)
        loglik = -0.5 * (diff * r).sum(-1) - 0.5 * torch.logdet(cov_t) - 0.5 * d * math.log(2 * math.pi)
        resp = torch.softmax(loglik + self.weights.log(), dim=1)              # [N, K]
        x0_k = self.means[None] + a * torch.einsum("kij,nkj->nki", self.covs, r)
        cov_k = self.covs - a * a * self.covs @ prec @ self.covs               # [K, d, d]
        eps = s * torch.einsum("nk,nki->ni", resp, r)
        x0 = torch.einsum("nk,nki->ni", resp, x0_k)
        second = (torch.einsum("nk,ki->ni", resp, torch.diagonal(cov_k, dim1=-2, dim2=-1))
                  + torch.einsum("nk,nki->ni", resp, x0_k * x0_k))
        return eps, x0, second - x0 * x0


def make_mixture(weights, means, covs) -> Mixture:
    f64 = dict(dtype=torch.float64)
    w = torch.tensor(weights, **f64)
    return Mixture(w / w.sum(), torch.tensor(means, **f64), torch.tensor(covs, **f64))


# Three anisotropic, correlated components; overall variance < 1 per axis, like normalised data.
GMM = make_mixture(
    [0.5, 0.3, 0.2],
    [[-0.9, 0.4], [0.7, 0.8], [0.3, -0.9]],
    [[[0.05, 0.02], [0.02, 0.03]], [[0.02, -0.01], [-0.01, 0.04]], [[0.06, 0.0], [0.0, 0.01]]],
)


def _groups(y, t) -> dict:
    """Rows sharing (label, time): {(label or None, time as a python number): row indices [n]}."""
    if y is None:
        keys = [None]
        label_of = torch.zeros(t.shape[0], dtype=torch.long)
    else:
        uniq, label_of = torch.unique(y, return_inverse=True)
        keys = uniq.tolist()
    times, time_of = torch.unique(t, return_inverse=True)
    code = label_of * times.numel() + time_of
    groups = {}
    for c in torch.unique(code).tolist():
        label_idx, time_idx = divmod(c, times.numel())
        groups[(keys[label_idx], times[time_idx].item())] = (code == c).nonzero()[:, 0]
    return groups


class DDPMOracle:
    """model(x, t, y) -> exact epsilon ([N, d]) or [epsilon, v] ([N, 2d]) for the T-step linear/cosine chain.

    `mixtures` maps each label (None for an unconditional model) to its Mixture; `null_label` is exposed
    like a class-conditional network's attribute. Counts its calls and the batch sizes it saw."""

    def __init__(self, mixtures: dict, num_timesteps=1000, beta_schedule="linear", learn_sigma=False,
                 null_label=None):
        self.mixtures, self.learn_sigma, self.null_label = mixtures, learn_sigma, null_label
        betas = get_beta_schedule(beta_schedule, num_timesteps)
        self.betas = betas
        self.abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        self.post_var = betas * (1 - abar_prev) / (1 - self.abar)
        self.post_logvar_clipped = torch.cat([self.post_var[1:2], self.post_var[1:]]).log()
        self.coef1 = betas * abar_prev.sqrt() / (1 - self.abar)
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(x.shape[0])
        assert torch.equal(t, t.round()), "DDPM models must be told integer timesteps"
        idx = t.long()
        xd = x.double()
        out = torch.empty(x.shape[0], x.shape[1] * (2 if self.learn_sigma else 1), dtype=torch.float64)
        for (label, i), rows in _groups(y, idx).items():
            i = int(i)
            ab = self.abar[i].item()
            eps, _, cov_x0 = self.mixtures[label].posterior(xd[rows], ab ** 0.5, (1 - ab) ** 0.5)
            out[rows, : x.shape[1]] = eps
            if self.learn_sigma:
                var = self.post_var[i] + self.coef1[i] ** 2 * cov_x0
                lo, hi = self.post_logvar_clipped[i], self.betas[i].log()
                frac = ((var.log() - lo) / (hi - lo)).clamp(0, 1)
                out[rows, x.shape[1]:] = 2 * frac - 1
        return out.to(x.dtype)


class FlowOracle:
    """model(x, t, y) -> exact velocity E[noise - x0 | x_t] with t the model time (1000 * flow time)."""

    def __init__(self, mixtures: dict, time_scale=1000.0, null_label=None):
        self.mixtures, self.time_scale, self.null_label = mixtures, time_scale, null_label
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(x.shape[0])
        tt = t.double() / self.time_scale
        xd = x.double()
        out = torch.empty_like(xd)
        for (label, tau), rows in _groups(y, tt).items():
            eps, x0, _ = self.mixtures[label].posterior(xd[rows], 1 - tau, tau)
            out[rows] = eps - x0
        return out.to(x.dtype)


@pytest.fixture
def gmm():
    return GMM


@pytest.fixture
def oracles():
    """The helpers above, for test modules (conftest objects are not importable by name)."""
    return {"Mixture": Mixture, "make_mixture": make_mixture, "DDPMOracle": DDPMOracle,
            "FlowOracle": FlowOracle, "GMM": GMM}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Everything here is small: one thread (see tests/conftest.py); measured 0.8 s vs 12 s for a
    100-step sampler on a shared 2-core box."""
