"""Flow matching with the linear interpolant (rectified flow / SiT's "Linear" path): velocity prediction, ODE samplers."""
from __future__ import annotations

import math

import numpy as np
import torch

from .losses import mean_flat
from .objective import Objective


class FlowMatching(Objective):
    """x_t = (1 - t) x_0 + t * noise for t in [0, 1] (t = 0 data, t = 1 noise); the model predicts the
    velocity dx_t/dt = noise - x_0 and the loss is its mean-squared error, t ~ Uniform(0, 1).

    Time fed to the model: `time_scale * t` (1000 by default), so the same sinusoidal timestep embedder a
    DiT/DiG uses for DDPM (timesteps 0..999) sees the same numeric range; noisier inputs get larger
    values in both objectives.

    Samplers integrate dx/dt = v(x, t) from t = 1 to t = 0 on a uniform grid of `steps` intervals:
    "euler" (steps model calls), "heun" (2 * steps calls: Euler predictor, trapezoidal corrector),
    "midpoint" (2 * steps calls: the velocity at the interval's midpoint), "dpm++2m" (steps calls:
    DPM-Solver++(2M) on the path's alpha_t = 1 - t, sigma_t = t, second order from one call per step)
    and "dopri5" (adaptive Dormand-Prince 5(4) through scipy's solve_ivp; `steps` is ignored, options
    rtol/atol). Options: time_scale, default_sampler ("heun"), default_steps (50; midpoint and dpm++2m
    take 20 when they are not the default sampler).
    The model must output C channels (learn_sigma is always False).
    """

    name = "flow"
    samplers = ("euler", "heun", "midpoint", "dpm++2m", "dopri5")
    sampler_options = {"euler": {}, "heun": {}, "midpoint": {}, "dpm++2m": {}, "dopri5": {"rtol": 1e-4, "atol": 1e-4}}
    fast_samplers = {"midpoint": 20, "dpm++2m": 20}

    def __init__(self, learn_sigma: bool = False, time_scale: float = 1000.0, default_sampler: str = "heun",
                 default_steps: int = 50):
        if learn_sigma:
            raise ValueError("flow matching predicts a velocity only: learn_sigma must be False "
                             "(create the model with learn_sigma=False)")
        self.learn_sigma = False
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = float(time_scale)
        self.default_sampler = self._resolve_sampler(default_sampler)
        self.default_steps = self._normalize_steps(self.default_sampler, default_steps)

    def options(self) -> dict:
        """The constructor options that rebuild this objective: ``FlowMatching(**obj.options())``."""
        return {"learn_sigma": False, "time_scale": self.time_scale, "default_sampler": self.default_sampler,
                "default_steps": self.default_steps}

    def __repr__(self):
        return f"FlowMatching(time_scale={self.time_scale:g})"

    # ------------------------------------------------------------------------------------ process
    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise; x0, noise [B, ...], t [B] in [0, 1]."""
        t = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - t) * x0 + t * noise

    # ---------------------------------------------------------------------------------- training
    def training_loss(self, model, x0: torch.Tensor, y, t=None, noise=None) -> dict:
        """Velocity MSE for a batch x0 [B, C, ...] with labels y (passed to the model as given).

        t: [B] floats in [0, 1] (default uniform from torch's global RNG); noise: like x0 (default
        torch.randn_like(x0), drawn after t). Returns "loss" (scalar) and per-sample [B] tensors
        "loss_per_sample", "mse" and "t".
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
            raise ValueError("x0 must be a tensor of shape [B, C, ...]")
        batch = x0.shape[0]
        time_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
        if t is None:
            t = torch.rand(batch, device=x0.device, dtype=time_dtype)
        else:
            t = torch.as_tensor(t, device=x0.device)
            if not t.dtype.is_floating_point or t.shape != (batch,):
                raise ValueError(f"t must be a float tensor of shape ({batch},), got {t.dtype} {tuple(t.shape)}")
            if bool((t < 0).any()) or bool((t > 1).any()):
                raise ValueError("t must lie in [0, 1]")
            t = t.to(time_dtype)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
        x_t = self.interpolate(x0, noise, t)
        out = model(x_t, t * self.time_scale, y)
        self._check_output(out, tuple(x0.shape), "training_loss")
        out = out.to(x0.dtype)  # e.g. bf16 autocast outputs: compute the loss in the data's precision
        mse = mean_flat((out - (noise - x0)) ** 2)
        return {"loss": mse.mean(), "loss_per_sample": mse, "mse": mse, "t": t}

    # ---------------------------------------------------------------------------------- sampling
    def _normalize_steps(self, sampler: str, steps):
        if isinstance(steps, str) and steps.strip().isdigit():
            steps = int(steps)
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"flow samplers take an integer number of steps, got {steps!r}")
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        return steps

    def _network_passes(self, sampler: str, steps: int) -> int | None:
        # dopri5 adapts its steps: not known
        return {"euler": steps, "heun": 2 * steps, "midpoint": 2 * steps, "dpm++2m": steps}.get(sampler)

    def _run_sampler(self, sampler, denoise, x, steps, rng, progress, **options):
        if sampler == "dopri5":
            return self._dopri5(denoise, x, progress, **options)
        scale = self.time_scale
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        if sampler == "dpm++2m":
            return self._dpm_solver_2m(denoise, x, times, progress)
        for i in self._progress(range(steps), steps, progress, sampler):
            t, t_next = times[i], times[i + 1]
            dt = t_next - t
            v = denoise(x, t * scale, i + 1, steps)
            if sampler == "euler":
                x = x + dt * v
            elif sampler == "midpoint":
                v_mid = denoise(x + 0.5 * dt * v, (t + 0.5 * dt) * scale, i + 1, steps)
                x = x + dt * v_mid
            else:
                x_pred = x + dt * v
                v_next = denoise(x_pred, t_next * scale, i + 1, steps)
                x = x + dt * 0.5 * (v + v_next)
        return x

    def _dpm_solver_2m(self, denoise, x, times, progress):
        """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data prediction on x_t = alpha_t x_0 + sigma_t
        noise with alpha_t = 1 - t, sigma_t = t: the network's x_0 is D = x - t v, and a step s -> t is
        x_t = (sigma_t / sigma_s) x_s + (alpha_t - alpha_s sigma_t / sigma_s) D', with D' = D (first
        order) or the linear extrapolation in lambda = log(alpha / sigma) through the previous step's D
        (second order). First order where lambda is infinite: the step from t = 1 (pure noise; there
        it is Euler's step), the next one (its history lies at lambda = -inf), and the last, to t = 0,
        which returns D."""
        scale, steps = self.time_scale, len(times) - 1
        lam = [math.log((1 - t) / t) if 0 < t < 1 else (-math.inf if t >= 1 else math.inf) for t in times]
        previous = None
        for i in self._progress(range(steps), steps, progress, "dpm++2m"):
            s, t = times[i], times[i + 1]
            data = x - s * denoise(x, s * scale, i + 1, steps)
            if t <= 0:
                x = data
                break
            d = data
            if previous is not None and math.isfinite(lam[i - 1]):
                r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
                d = (1 + 0.5 / r) * data - (0.5 / r) * previous
            ratio = t / s
            x = ratio * x + ((1 - t) - (1 - s) * ratio) * d
            previous = data
        return x

    def _dopri5(self, denoise, x, progress, rtol: float, atol: float):
        """Adaptive RK45 (Dormand-Prince) from t = 1 to t = 0 over the flattened batch (float64 state)."""
        from scipy.integrate import solve_ivp

        shape, device, dtype = x.shape, x.device, x.dtype
        bar = self._progress(None, None, progress, "dopri5 (function evaluations)")
        calls = [0]

        def velocity(t, state):
            calls[0] += 1
            bar.update(1)
            xt = torch.from_numpy(state).reshape(shape).to(device=device, dtype=dtype)
            v = denoise(xt, t * self.time_scale, calls[0], "?")
            return v.detach().to("cpu", torch.float64).reshape(-1).numpy()

        try:
            sol = solve_ivp(velocity, (1.0, 0.0), x.detach().to("cpu", torch.float64).reshape(-1).numpy(),
                            method="RK45", rtol=rtol, atol=atol)
        finally:
            bar.close()
        if not sol.success:
            raise RuntimeError(f"dopri5 failed after {calls[0]} model calls: {sol.message}")
        return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape).to(device=device, dtype=dtype)
