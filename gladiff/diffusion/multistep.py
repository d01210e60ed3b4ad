"""Few-step samplers for discrete-time Gaussian diffusion through diffusers' schedulers: DPM-Solver++
(2M; Lu et al. 2022), its SDE variant, and UniPC (Zhao et al. 2023), both second order.

The schedulers get the objective's own betas (``trained_betas``) and only the epsilon channels of the
network's output: a learned-variance model's extra channels are cut off here (diffusers' own cut,
``model_output[:, :3]``, assumes RGB and would break 4-channel latents), and these ODE/SDE solvers do
not use a variance. Guidance happened before (the objective's denoiser), so the schedulers see the
guided epsilon. The SDE variant's noise comes from the sampler's generator (``variance_noise``), so a
seed gives the same samples on any device. diffusers is an optional dependency (``gladiff[samplers]``).
"""
from __future__ import annotations

from typing import Callable

import torch

from gladiff.errors import MissingDependencyError

SAMPLERS = ("dpm++2m", "dpm++2m-sde", "unipc")


def make_scheduler(sampler: str, betas: torch.Tensor, steps: int):
    """A fresh diffusers scheduler for ``sampler`` over the chain ``betas`` ``[T]``, set to ``steps``
    steps (timesteps spaced evenly from T-1, the last step to sigma 0)."""
    try:
        import diffusers
    except ImportError as err:
        raise MissingDependencyError(f"sampler {sampler!r} runs diffusers' schedulers, and diffusers is not "
                                     "installed: pip install 'gladiff[samplers]' (or use ddpm / ddim)") from err
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.double().cpu().numpy(),
                  prediction_type="epsilon", solver_order=2, lower_order_final=True, final_sigmas_type="zero",
                  timestep_spacing="linspace")
    if sampler == "unipc":
        scheduler = diffusers.UniPCMultistepScheduler(**common, predict_x0=True, solver_type="bh2")
    elif sampler in ("dpm++2m", "dpm++2m-sde"):
        algorithm = "dpmsolver++" if sampler == "dpm++2m" else "sde-dpmsolver++"
        scheduler = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type=algorithm, solver_type="midpoint")
    else:
        raise ValueError(f"no diffusers scheduler for sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    scheduler.set_timesteps(steps)
    return scheduler


def multistep_sample(scheduler, eps: Callable[[torch.Tensor, int, int], torch.Tensor], x: torch.Tensor,
                     noise: Callable[[tuple], torch.Tensor] | None = None, steps_iter=None) -> torch.Tensor:
    """Walk ``scheduler.timesteps`` from the noise ``x`` ``[B, C, ...]``: ``eps(x, t, i)`` is the
    (guided) epsilon ``[B, C, ...]`` at integer timestep ``t`` of step ``i``; ``noise(shape)`` draws
    the SDE variant's noise (None for the deterministic solvers). Returns the samples, ``x``'s dtype."""
    timesteps = [int(t) for t in scheduler.timesteps]
    for i in steps_iter if steps_iter is not None else range(len(timesteps)):
        t = timesteps[i]
        kwargs = {"variance_noise": noise(x.shape)} if noise is not None else {}
        x = scheduler.step(eps(x, t, i), t, x, **kwargs).prev_sample
    return x
