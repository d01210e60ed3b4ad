"""The DiT/IDDPM diffusion objective: epsilon prediction, learned-range variance, hybrid loss; DDPM and DDIM
samplers, and DPM-Solver++ (2M, and its SDE variant) and UniPC through diffusers' schedulers."""
from __future__ import annotations

import torch

from .gaussian_diffusion import GaussianDiffusion
from . import multistep
from .losses import mean_flat
from .objective import Objective
from .schedules import get_beta_schedule, space_timesteps


class DDPM(Objective):
    """Gaussian diffusion as trained in DiT (and IDDPM with learned sigmas).

    Options: num_timesteps (T, 1000), beta_schedule ("linear" 1e-4 -> 0.02 scaled by 1000/T, or "cosine"),
    learn_sigma (True: the model outputs [epsilon, v] with 2C channels and the variance is learned in
    IDDPM's range; False: C channels, fixed variance), sigma_small (fixed variance tilde_beta instead of
    beta; only without learn_sigma), clip_denoised (clamp predicted x_0 to [-1, 1] while sampling; DiT
    samples latents and does not), default_sampler ("ddpm"), default_steps (250 = the paper's sampling, or T if smaller),
    guided_channels (None: guidance extrapolates every epsilon channel; an int k guides only channels [:k] and
    takes the rest from the conditional pass, which k = 3 makes the official DiT/DiG code's guidance).
    Samplers: "ddpm" (ancestral), "ddim" (eta), and through diffusers' schedulers "dpm++2m",
    "dpm++2m-sde" and "unipc" (second order, 20 steps by default; ``multistep``).

    Loss (IDDPM "hybrid"): mean-squared error on epsilon + L_vb, where L_vb is the variational-bound term
    of the timestep (bits/dim) computed with the predicted mean detached, so it trains only the variance,
    scaled by T/1000 (IDDPM's rescaling; exactly 1 for the paper's T = 1000). t ~ Uniform{0..T-1}.
    The model is told the integer timestep as a float tensor [B] in 0..T-1.
    """

    name = "ddpm"
    samplers = ("ddpm", "ddim", *multistep.SAMPLERS)
    sampler_options = {"ddpm": {}, "ddim": {"eta": 0.0}, **{s: {} for s in multistep.SAMPLERS}}
    fast_samplers = {s: 20 for s in multistep.SAMPLERS}

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear", learn_sigma: bool = True,
                 sigma_small: bool = False, clip_denoised: bool = False, default_sampler: str = "ddpm",
                 default_steps: int | str | None = None, guided_channels: int | None = None):
        self.num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule
        self.learn_sigma = bool(learn_sigma)
        if sigma_small and self.learn_sigma:
            raise ValueError("sigma_small selects a fixed variance; it cannot be combined with learn_sigma=True")
        self.sigma_small = bool(sigma_small)
        self.clip_denoised = bool(clip_denoised)
        self.diffusion = GaussianDiffusion(get_beta_schedule(beta_schedule, num_timesteps))
        self.default_sampler = self._resolve_sampler(default_sampler)
        if default_steps is None:
            default_steps = min(250, num_timesteps)
        self.default_steps = self._normalize_steps(self.default_sampler, default_steps)
        if guided_channels is not None and (isinstance(guided_channels, bool) or not isinstance(guided_channels, int)
                                            or guided_channels < 1):
            raise ValueError(f"guided_channels must be a positive integer or None, got {guided_channels!r}")
        self.guided_channels = guided_channels
        self._respaced: dict[tuple, GaussianDiffusion] = {}

    def options(self) -> dict:
        """The constructor options that rebuild this objective: ``DDPM(**obj.options())``."""
        return {"num_timesteps": self.num_timesteps, "beta_schedule": self.beta_schedule,
                "learn_sigma": self.learn_sigma, "sigma_small": self.sigma_small,
                "clip_denoised": self.clip_denoised, "default_sampler": self.default_sampler,
                "default_steps": self.default_steps, "guided_channels": self.guided_channels}

    def _guided_channels(self, channels: int) -> int | None:
        if self.guided_channels is not None:
            return min(self.guided_channels, channels)
        return super()._guided_channels(channels)

    def __repr__(self):
        return (f"DDPM(num_timesteps={self.num_timesteps}, beta_schedule={self.beta_schedule!r}, "
                f"learn_sigma={self.learn_sigma}, sigma_small={self.sigma_small}, "
                f"clip_denoised={self.clip_denoised})")

    # ---------------------------------------------------------------------------------- training
    def training_loss(self, model, x0: torch.Tensor, y, t=None, noise=None) -> dict:
        """Hybrid loss for a batch x0 [B, C, ...] with labels y (passed to the model as given).

        t: [B] integer timesteps (default: uniform from torch's global RNG); noise: like x0 (default:
        torch.randn_like(x0), global RNG; drawn after t, as DiT does).
        Returns dict with "loss" (scalar mean over the batch) and per-sample [B] tensors "loss_per_sample",
        "mse" (epsilon MSE), "vb" (rescaled bound term, zeros without learn_sigma) and "t".
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
            raise ValueError("x0 must be a tensor of shape [B, C, ...]")
        batch = x0.shape[0]
        T = self.num_timesteps
        if t is None:
            t = torch.randint(0, T, (batch,), device=x0.device)
        else:
            t = torch.as_tensor(t, device=x0.device)
            if t.dtype.is_floating_point or t.shape != (batch,):
                raise ValueError(f"t must be an integer tensor of shape ({batch},), got {t.dtype} {tuple(t.shape)}")
            if bool((t < 0).any()) or bool((t >= T).any()):
                raise ValueError(f"t must lie in [0, {T - 1}]")
            t = t.long()
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
        dif = self.diffusion
        x_t = dif.q_sample(x0, t, noise)
        time_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        out = model(x_t, t.to(time_dtype), y)
        channels = x0.shape[1]
        self._check_output(out, (batch, channels * (2 if self.learn_sigma else 1), *x0.shape[2:]),
                           "training_loss")
        out = out.to(x0.dtype)  # e.g. bf16 autocast outputs: compute the loss in the data's precision
        eps = out[:, :channels]
        mse = mean_flat((noise - eps) ** 2)
        if self.learn_sigma:
            # The bound term trains only the variance channels: the mean (epsilon) is detached so the
            # MSE alone shapes it (IDDPM sec. 3.1).
            frozen = torch.cat([eps.detach(), out[:, channels:]], dim=1)
            vb = dif.vb_terms_bpd(frozen, x0, x_t, t, learn_sigma=True) * (T / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        per_sample = mse + vb
        return {"loss": per_sample.mean(), "loss_per_sample": per_sample, "mse": mse, "vb": vb, "t": t}

    # ---------------------------------------------------------------------------------- sampling
    def _normalize_steps(self, sampler: str, steps):
        """Int (evenly spaced steps) or an IDDPM respacing string ("250", "10,20", "ddim50"); the
        diffusers samplers take an int (their own even spacing)."""
        if sampler in multistep.SAMPLERS:
            if isinstance(steps, str) and steps.strip().isdigit():
                steps = int(steps)
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ValueError(f"sampler {sampler!r} takes a number of steps such as 20, got {steps!r} "
                                 "(respacing strings are for ddpm and ddim)")
        if isinstance(steps, bool):
            raise ValueError(f"steps must be a positive int or a respacing string, got {steps!r}")
        if isinstance(steps, int):
            if steps <= 0:
                raise ValueError(f"steps must be positive, got {steps}")
            if steps > self.num_timesteps:
                raise ValueError(f"steps={steps} exceeds the {self.num_timesteps} training timesteps")
            return steps
        if isinstance(steps, str):
            space_timesteps(self.num_timesteps, steps)  # validates, raising a ValueError on a bad string
            return steps
        raise ValueError(f"steps must be a positive int or a respacing string, got {steps!r}")

    def respaced(self, steps) -> GaussianDiffusion:
        """The chain a sampler with `steps` (int or respacing string) walks; the full chain for T steps."""
        use = space_timesteps(self.num_timesteps, steps)
        if len(use) == self.num_timesteps:
            return self.diffusion
        key = tuple(use)
        if key not in self._respaced:
            self._respaced[key] = self.diffusion.respace(use)
        return self._respaced[key]

    def _network_passes(self, sampler: str, steps) -> int:
        if sampler in multistep.SAMPLERS:
            return steps
        return self.respaced(steps).num_timesteps  # both samplers: one pass per step of the chain

    def _run_sampler(self, sampler, denoise, x, steps, rng, progress, eta: float = 0.0):
        if sampler in multistep.SAMPLERS:
            return self._multistep(sampler, denoise, x, steps, rng, progress)
        dif = self.respaced(steps)
        if sampler == "ddpm":
            return self._ancestral(dif, denoise, x, rng, progress)
        return self._ddim(dif, denoise, x, rng, progress, float(eta))

    def _ancestral(self, dif: GaussianDiffusion, denoise, x, rng, progress):
        """DDPM ancestral sampling: x_{t-1} ~ p(x_{t-1} | x_t), no noise on the last step."""
        n = dif.num_timesteps
        for k in self._progress(reversed(range(n)), n, progress, "ddpm"):
            t = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            out = denoise(x, dif.timestep_map[k].item(), n - k, n)
            p = dif.p_mean_variance(out, x, t, learn_sigma=self.learn_sigma, sigma_small=self.sigma_small,
                                    clip_denoised=self.clip_denoised)
            x = p["mean"]
            if k > 0:
                x = x + (0.5 * p["log_variance"]).exp() * rng(x.shape)
        return x

    def _multistep(self, sampler: str, denoise, x, steps: int, rng, progress):
        """DPM-Solver++ / UniPC (``multistep``) on the full T-step chain: the model is told the
        scheduler's integer timesteps and only its epsilon channels are used (with
        ``clip_denoised``, the epsilon of the clamped x_0, as the other samplers do)."""
        scheduler = multistep.make_scheduler(sampler, self.diffusion.betas, steps)
        channels, dif = x.shape[1], self.diffusion

        def eps(x_t, t: int, i: int):
            e = denoise(x_t, t, i + 1, steps)[:, :channels]
            if self.clip_denoised:
                tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
                e = dif.predict_eps_from_x0(x_t, tt, dif.predict_x0_from_eps(x_t, tt, e).clamp(-1, 1))
            return e

        noise = rng if sampler == "dpm++2m-sde" else None
        return multistep.multistep_sample(scheduler, eps, x, noise,
                                          self._progress(range(steps), steps, progress, sampler))

    def _ddim(self, dif: GaussianDiffusion, denoise, x, rng, progress, eta: float):
        """DDIM (Song et al. 2021): x_{t'} = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z,
        s = eta * sqrt((1 - abar') / (1 - abar)) * sqrt(1 - abar / abar'). eta = 0 is deterministic,
        eta = 1 has the DDPM posterior variance. Learned variance channels are ignored."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        n = dif.num_timesteps
        for k in self._progress(reversed(range(n)), n, progress, "ddim"):
            t = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            out = denoise(x, dif.timestep_map[k].item(), n - k, n)
            p = dif.p_mean_variance(out, x, t, learn_sigma=self.learn_sigma, sigma_small=self.sigma_small,
                                    clip_denoised=self.clip_denoised)
            abar = dif.gather("alphas_cumprod", t, x)
            abar_prev = dif.gather("alphas_cumprod_prev", t, x)
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            x = abar_prev.sqrt() * p["pred_x0"] + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * p["eps"]
            if k > 0 and eta > 0:
                x = x + sigma * rng(x.shape)
        return x
