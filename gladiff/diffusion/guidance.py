"""Classifier-free guidance (Ho & Salimans 2022): one batched forward for the conditional and null-label passes."""
from __future__ import annotations

import torch


def guided_prediction(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float,
                      guided_channels: int | None = None) -> torch.Tensor:
    """Extrapolate uncond + s * (cond - uncond).

    cond, uncond: [B, C_out, ...] model outputs for the real and the null label. With `guided_channels=None`
    the whole prediction is guided (epsilon or velocity). With learned variance pass the number of
    prediction channels C: channels [:C] are guided and the variance channels [C:] are taken from the
    conditional half (as DiT does). Returns [B, C_out, ...].
    """
    if guided_channels is None:
        return uncond + cfg_scale * (cond - uncond)
    c = guided_channels
    guided = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([guided, cond[:, c:]], dim=1)


def batched_cfg_forward(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null_label: int):
    """Run `model` once on [x; x] with labels [y; null] and return (cond, uncond), each [B, ...].

    One call instead of two keeps a single kernel launch sequence per step and doubles the batch,
    which is how DiT's sampler does it.
    """
    batch = x.shape[0]
    null = torch.full_like(y, null_label)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    if not isinstance(out, torch.Tensor) or out.shape[0] != 2 * batch:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"guided model call on a batch of {2 * batch} returned {got}")
    return out[:batch], out[batch:]
