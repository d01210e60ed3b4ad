"""The objective interface shared by DDPM and flow matching: argument checks, guidance plumbing, RNG.

An objective owns the parameterisation (what the network predicts, how t is fed to it, how samples are
integrated); the network is any callable `model(x, t, y) -> tensor` and nothing here knows its internals.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from tqdm.auto import tqdm

from .guidance import batched_cfg_forward, guided_prediction


class Objective:
    """Base class. Subclasses set `name`, `learn_sigma`, `samplers`, `default_sampler`, `default_steps`
    and implement `training_loss`, `_normalize_steps` and `_run_sampler`."""

    name: str = ""
    learn_sigma: bool = False
    samplers: tuple[str, ...] = ()
    default_sampler: str = ""
    default_steps: int | str = 0
    # Extra keyword options each sampler accepts in `sample(..., **options)`, with their defaults.
    sampler_options: dict[str, dict] = {}
    # Few-step samplers and their default number of steps when `steps` is not given (other samplers,
    # and these when they are the default sampler, take `default_steps`).
    fast_samplers: dict[str, int] = {}

    def options(self) -> dict:
        """The constructor options that rebuild this objective (``create_objective(obj.name,
        **obj.options())``): what a shared model folder records."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- training
    def training_loss(self, model, x0: torch.Tensor, y, t=None, noise=None) -> dict:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- sampling
    def sample(self, model, shape, y=None, sampler: str | None = None, steps=None, cfg_scale: float = 1.0,
               seed: int | None = None, generator: torch.Generator | None = None, progress: bool = False,
               device=None, null_label: int | None = None, dtype: torch.dtype = torch.float32,
               **options) -> torch.Tensor:
        """Draw samples of `shape` = [B, C, ...] (e.g. [B, C, H, W]) from `model(x, t, y)`.

        y: [B] int64 class labels, or None for unconditional sampling (the null label is then used when the
        model has one). sampler: one of `self.samplers` (default `self.default_sampler`). steps: number of
        sampler steps (DDPM also takes a respacing string, e.g. "250" or "ddim50"); default
        `self.default_steps`. cfg_scale: classifier-free guidance scale s; s != 1 runs the conditional and
        the null-label batch in one model call and uses uncond + s * (cond - uncond). null_label: the
        null class index (default `model.null_label`). seed / generator: source of the initial noise and
        of every later draw (neither: torch's global RNG). device: where to sample (default: the model's
        parameters, else y's device, else CPU). options: sampler-specific (e.g. eta for "ddim").
        Returns the final samples, a `dtype` tensor of `shape` on `device`.
        """
        sampler = self._resolve_sampler(sampler)
        steps = self._normalize_steps(sampler, self._default_steps(sampler) if steps is None else steps)
        options = self._resolve_options(sampler, options)
        shape = _check_shape(shape)
        device = _resolve_device(device, model, y)
        labels = _resolve_labels(y, shape[0], device)
        if null_label is None:
            null_label = getattr(model, "null_label", None)
        cfg_scale = float(cfg_scale)
        if cfg_scale != 1.0:
            if null_label is None:
                raise ValueError(
                    f"cfg_scale={cfg_scale} needs a null label for the unconditional pass, but none was given "
                    "and the model has no `null_label` (train with class dropout, or pass null_label=...)")
            if labels is None:
                raise ValueError(f"cfg_scale={cfg_scale} needs class labels y for the conditional pass")
        if labels is None and null_label is not None:
            labels = torch.full((shape[0],), int(null_label), dtype=torch.long, device=device)
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        if isinstance(model, torch.nn.Module) and model.training:
            warnings.warn("sampling with a model in training mode (label dropout and similar stay active); "
                          "call model.eval() first", stacklevel=2)

        time_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        denoise = self._make_denoiser(model, shape, labels, cfg_scale, null_label, device, time_dtype)
        rng = _Noise(generator, device, dtype)
        x = rng(shape)
        with torch.no_grad():
            x = self._run_sampler(sampler, denoise, x, steps, rng, progress, **options)
        return x

    def network_passes(self, sampler: str | None = None, steps=None) -> int | None:
        """How many times `sample` calls the network for one batch with this sampler and steps (a guided
        call, conditional and null batch together, counts once), or None where that is not known in
        advance (adaptive step sizes). Raises like `sample` for an unknown sampler or bad steps."""
        sampler = self._resolve_sampler(sampler)
        return self._network_passes(sampler, self._normalize_steps(
            sampler, self._default_steps(sampler) if steps is None else steps))

    def _default_steps(self, sampler: str):
        if sampler == self.default_sampler:
            return self.default_steps
        return self.fast_samplers.get(sampler, self.default_steps)

    # ------------------------------------------------------------------------------ subclass hooks
    def _normalize_steps(self, sampler: str, steps):
        raise NotImplementedError

    def _network_passes(self, sampler: str, steps) -> int | None:
        return None

    def _run_sampler(self, sampler, denoise, x, steps, rng, progress, **options) -> torch.Tensor:
        raise NotImplementedError

    def _guided_channels(self, channels: int) -> int | None:
        """How many leading output channels guidance extrapolates (None = all)."""
        return channels if self.learn_sigma else None

    # ---------------------------------------------------------------------------------- plumbing
    def _resolve_sampler(self, sampler: str | None) -> str:
        if sampler is None:
            return self.default_sampler
        if sampler not in self.samplers:
            raise ValueError(f"unknown sampler {sampler!r} for objective {self.name!r}; "
                             f"valid: {', '.join(self.samplers)}")
        return sampler

    def _resolve_options(self, sampler: str, options: dict) -> dict:
        allowed = self.sampler_options.get(sampler, {})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            valid = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"sampler {sampler!r} got unknown option(s) {', '.join(unknown)}; valid: {valid}")
        return {**allowed, **options}

    def _check_output(self, out, expected: tuple, where: str) -> None:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"model returned {type(out).__name__}, expected a tensor ({where})")
        if tuple(out.shape) != expected:
            hint = (" (learn_sigma objectives need 2*C output channels)" if self.learn_sigma
                    else " (this objective needs C output channels; create the model with learn_sigma="
                         f"{self.learn_sigma})")
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {expected}{hint} ({where})")

    def _make_denoiser(self, model, shape, labels, cfg_scale, null_label, device, time_dtype) -> Callable:
        """Return denoise(x, t_model, step, total) -> model output [B, C_out, ...], guided and checked."""
        batch, channels = shape[0], shape[1]
        out_channels = channels * (2 if self.learn_sigma else 1)
        expected = (batch, out_channels, *shape[2:])
        guided_channels = self._guided_channels(channels)

        def denoise(x: torch.Tensor, t_model: float, step: int, total: int) -> torch.Tensor:
            t = torch.full((batch,), float(t_model), dtype=time_dtype, device=device)
            where = f"sampling step {step}/{total}, model time {float(t_model):g}"
            if cfg_scale == 1.0:
                out = model(x, t, labels)
                self._check_output(out, expected, where)
            else:
                cond, uncond = batched_cfg_forward(model, x, t, labels, null_label)
                self._check_output(cond, expected, where)
                out = guided_prediction(cond, uncond, cfg_scale, guided_channels)
            if not bool(torch.isfinite(out).all()):
                raise FloatingPointError(f"model output contains NaN or inf at {where}")
            return out.to(x.dtype)

        return denoise

    @staticmethod
    def _progress(iterable, total: int, progress: bool, desc: str):
        return tqdm(iterable, total=total, disable=not progress, desc=desc, leave=False)


class _Noise:
    """Standard normal draws of a given shape from one generator (or the global RNG), on `device`."""

    def __init__(self, generator, device, dtype):
        self.generator, self.device, self.dtype = generator, device, dtype

    def __call__(self, shape) -> torch.Tensor:
        if self.generator is None:
            return torch.randn(shape, device=self.device, dtype=self.dtype)
        # Draw where the generator lives (a CPU generator then gives the same numbers on any device).
        out = torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=self.dtype)
        return out.to(self.device)


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of ints like (B, C, H, W), got {shape!r}") from None
    if len(shape) < 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (B, C, ...) with positive sizes, got {shape}")
    return shape


def _resolve_device(device, model, y) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    if isinstance(y, torch.Tensor):
        return y.device
    return torch.device("cpu")


def _resolve_labels(y, batch: int, device) -> torch.Tensor | None:
    if y is None:
        return None
    labels = torch.as_tensor(y, device=device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels y must be integers, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.shape != (batch,):
        raise ValueError(f"labels y have shape {tuple(labels.shape)} but the batch is {batch}: expected ({batch},)")
    return labels
