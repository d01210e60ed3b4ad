"""Diffusion objectives and samplers. Models are plain callables `model(x, t, y)`; nothing here knows them.

    obj = create_objective("ddpm", num_timesteps=1000, beta_schedule="linear", learn_sigma=True)
    loss = obj.training_loss(model, x0, y)["loss"]
    x = obj.sample(model, (B, C, H, W), y, sampler="ddpm", steps=250, cfg_scale=4.0, seed=0)
"""
from __future__ import annotations

import inspect

from .ddpm import DDPM
from .flow import FlowMatching
from .gaussian_diffusion import GaussianDiffusion
from .guidance import batched_cfg_forward, guided_prediction
from .objective import Objective
from .schedules import BETA_SCHEDULES, get_beta_schedule, space_timesteps

OBJECTIVES: dict[str, type[Objective]] = {"ddpm": DDPM, "flow": FlowMatching}


def create_objective(name: str, **options) -> Objective:
    """Build the objective `name` (a key of OBJECTIVES) with its options (see DDPM and FlowMatching).

    Raises ValueError for an unknown name or an option the objective does not take.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"objective {name!r} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return cls(**options)


__all__ = [
    "BETA_SCHEDULES", "DDPM", "FlowMatching", "GaussianDiffusion", "OBJECTIVES", "Objective",
    "batched_cfg_forward", "create_objective", "get_beta_schedule", "guided_prediction", "space_timesteps",
]
