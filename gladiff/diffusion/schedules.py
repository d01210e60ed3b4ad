"""Noise schedules of Gaussian diffusion and timestep respacing (DDPM / IDDPM / DiT conventions).

All tables are float64 torch tensors on the CPU; callers gather from them and cast to the working dtype.
"""
from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ("linear", "cosine")


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """DDPM's linear betas 1e-4 -> 0.02 for 1000 steps, rescaled by 1000/T for other T (as IDDPM/DiT).

    Returns betas [T] float64.
    """
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor | float, s: float = 0.008):
    """IDDPM's cosine cumulative signal level alpha_bar(t) for continuous t in [0, 1]."""
    if isinstance(t, torch.Tensor):
        return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_beta_schedule(num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """IDDPM's cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta).

    The cap keeps the last steps (where alpha_bar -> 0) from being singular. Returns betas [T] float64.
    """
    i = torch.arange(num_timesteps, dtype=torch.float64)
    betas = 1 - cosine_alpha_bar((i + 1) / num_timesteps) / cosine_alpha_bar(i / num_timesteps)
    return betas.clamp(max=max_beta)


def get_beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """Betas [T] float64 for a schedule named in BETA_SCHEDULES."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown beta_schedule {name!r}; valid: {', '.join(BETA_SCHEDULES)}")


def space_timesteps(num_timesteps: int, spacing: str | int) -> list[int]:
    """Pick the subset of the T training timesteps a respaced sampler visits (IDDPM's rule).

    `spacing` is
      - an int or "N": N steps spread evenly over [0, T-1], both ends included;
      - "N1,N2,...": T split into equal sections, section k gets Nk evenly spread steps;
      - "ddimN": the strided grid range(0, T, stride) with exactly N entries (DDIM paper's choice);
        a ValueError if no integer stride gives N.
    Returns the sorted list of kept timesteps (always contains 0).
    """
    spec = str(spacing).strip()
    if spec.startswith("ddim"):
        count = _positive_int(spec[len("ddim"):], spacing)
        if count > num_timesteps:
            raise ValueError(f"respacing {spacing!r} asks for {count} steps but there are only {num_timesteps}")
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == count:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"respacing {spacing!r}: no integer stride gives exactly {count} of {num_timesteps} steps; "
            f"use an even spacing such as {count!r} instead")
    counts = [_positive_int(part, spacing) for part in spec.split(",")]
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for k, count in enumerate(counts):
        size = base + (1 if k < extra else 0)
        if count > size:
            raise ValueError(
                f"respacing {spacing!r}: section {k} has {size} timesteps, cannot take {count}")
        # Evenly spaced real positions rounded to ints; the section's first and last steps are kept.
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        kept.extend(start + round(j * stride) for j in range(count))
        start += size
    return sorted(set(kept))


def _positive_int(text: str, spacing) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"bad timestep respacing {spacing!r}: expected an int, 'N1,N2,...' or 'ddimN'") from None
    if value <= 0:
        raise ValueError(f"bad timestep respacing {spacing!r}: step counts must be positive")
    return value


def respace_betas(alphas_cumprod: torch.Tensor, use_timesteps: list[int]) -> torch.Tensor:
    """Betas of the shorter chain that visits only `use_timesteps` with the same alpha_bar there.

    beta'_k = 1 - abar[t_k] / abar[t_{k-1}] (abar before the first step is 1), so the respaced
    forward marginals q(x_t | x_0) at the kept steps are unchanged. Returns betas [len(use_timesteps)].
    """
    abar = alphas_cumprod[torch.as_tensor(use_timesteps, dtype=torch.long)]
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1 - abar / prev
