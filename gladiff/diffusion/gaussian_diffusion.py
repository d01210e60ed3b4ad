"""Discrete-time Gaussian diffusion (DDPM, Ho et al. 2020; IDDPM, Nichol & Dhariwal 2021): the tables and the math.

This module is parameterisation-free arithmetic over a beta schedule: the forward process q(x_t | x_0),
the posterior q(x_{t-1} | x_t, x_0), the model's reverse step p(x_{t-1} | x_t) from an epsilon prediction
(fixed or learned-range variance) and the variational-bound term. The objective that calls a model
lives in `ddpm.py`.
"""
from __future__ import annotations

import torch

from .losses import LOG2, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import respace_betas


class GaussianDiffusion:
    """Tables of a T-step Gaussian diffusion with betas [T] (float64).

    `timestep_map[k]` is the timestep the model is told for chain index k: k itself for the full chain,
    the original (pre-respacing) timestep for a respaced chain, so a network trained on 1000 steps sees
    the values it was trained on.
    """

    def __init__(self, betas: torch.Tensor, timestep_map: torch.Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.num_timesteps = T = betas.shape[0]
        self.timestep_map = (torch.arange(T) if timestep_map is None
                             else torch.as_tensor(timestep_map, dtype=torch.long).cpu())
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        self.betas = betas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / abar - 1).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, tilde_beta_t).
        self.posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        # tilde_beta_0 = 0; its log is replaced by tilde_beta_1's (IDDPM) so log-variances stay finite.
        clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if T > 1 \
            else betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1 - abar)
        self.posterior_mean_coef2 = (1 - abar_prev) * alphas.sqrt() / (1 - abar)
        self.log_betas = betas.log()
        # DDPM's "fixed large" variance: beta_t, with tilde_beta_1 at t=0 for a sensible decoder.
        large = torch.cat([self.posterior_variance[1:2], betas[1:]]) if T > 1 else betas.clone()
        self.fixed_large_log_variance = large.log()
        self._device_cache: dict = {}

    # ----------------------------------------------------------------------------------------- helpers
    def respace(self, use_timesteps) -> "GaussianDiffusion":
        """A shorter chain through `use_timesteps` (sorted indices of this chain) with identical alpha_bar there."""
        use = sorted(int(t) for t in use_timesteps)
        if not use or use[0] < 0 or use[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must lie in [0, {self.num_timesteps - 1}]")
        return GaussianDiffusion(respace_betas(self.alphas_cumprod, use), self.timestep_map[use])

    def gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at integer timesteps t [B], cast to like's dtype/device, shaped [B, 1, ...] to broadcast."""
        key = (name, like.device, like.dtype)
        table = self._device_cache.get(key)
        if table is None:
            table = getattr(self, name).to(device=like.device, dtype=like.dtype)
            self._device_cache[key] = table
        return table[t.to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))

    # ---------------------------------------------------------------------------- forward process q
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean [B, ...] and variance/log-variance ([B, 1, ...]) of q(x_t | x_0)."""
        mean = self.gather("sqrt_alphas_cumprod", t, x0) * x0
        var = 1 - self.gather("alphas_cumprod", t, x0)
        return mean, var, var.log()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise; all [B, ...], t [B] int."""
        return (self.gather("sqrt_alphas_cumprod", t, x0) * x0
                + self.gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean [B, ...], variance and clipped log-variance [B, 1, ...] of q(x_{t-1} | x_t, x_0)."""
        mean = self.gather("posterior_mean_coef1", t, x_t) * x0 + self.gather("posterior_mean_coef2", t, x_t) * x_t
        return (mean, self.gather("posterior_variance", t, x_t),
                self.gather("posterior_log_variance_clipped", t, x_t))

    # ----------------------------------------------------------------------------- reverse process p
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self.gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return ((self.gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self.gather("sqrt_recipm1_alphas_cumprod", t, x_t))

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                        learn_sigma: bool, sigma_small: bool = False, clip_denoised: bool = False) -> dict:
        """Gaussian p(x_{t-1} | x_t) from the network output.

        model_output: [B, 2C, ...] (epsilon, then v in [-1, 1]) when learn_sigma, else [B, C, ...] epsilon.
        Learned range (IDDPM eq. 15): log sigma^2 = frac * log beta_t + (1 - frac) * log tilde_beta_t,
        frac = (v + 1) / 2. Fixed variance: beta_t ("large", DDPM/DiT default) or tilde_beta_t ("small").
        Returns dict mean, variance, log_variance (broadcastable to x_t), pred_x0 and eps, each [B, C, ...].
        """
        channels = x_t.shape[1]
        if learn_sigma:
            eps, v = model_output[:, :channels], model_output[:, channels:]
            min_log = self.gather("posterior_log_variance_clipped", t, x_t)
            max_log = self.gather("log_betas", t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output
            name = "posterior_log_variance_clipped" if sigma_small else "fixed_large_log_variance"
            log_variance = self.gather(name, t, x_t)
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance,
                "pred_x0": pred_x0, "eps": eps}

    # --------------------------------------------------------------------------- variational bound
    def vb_terms_bpd(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, *, learn_sigma: bool, sigma_small: bool = False) -> torch.Tensor:
        """Per-sample term of the variational bound in bits per dimension, [B].

        t > 0: KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) ) (L_{t-1});
        t = 0: -log p(x_0 | x_1) under the discretized Gaussian decoder (L_0).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t, learn_sigma=learn_sigma, sigma_small=sigma_small)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / LOG2
        nll = -mean_flat(discretized_gaussian_log_likelihood(
            x0, p["mean"], 0.5 * p["log_variance"])) / LOG2
        return torch.where(t.to(kl.device) == 0, nll, kl)
