"""Rebuilding a trained model (EMA weights by default), its objective and its decoder: from a training
checkpoint or run folder (``load_trained``), or from a shared model folder or Hugging Face Hub id
(``from_pretrained``; ``load_trained`` takes those too)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gladiff.errors import UsageError
from gladiff.train import checkpoint as ckpt
from gladiff.train.build import build_model, build_objective


@dataclass
class Trained:
    """A model ready to sample: ``model`` (eval mode, on the device), ``objective``, the model
    ``spec``, the training ``data_info``, the run ``config`` (a model folder's: its ``config.json``)
    and the ``step`` it was saved at (0 when its source does not say)."""

    model: torch.nn.Module
    objective: object
    spec: dict
    info: dict
    config: dict
    step: int
    path: Path

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.info["sample_size"]
        h, w = (s, s) if isinstance(s, int) else s
        return (self.info["in_channels"], h, w)


def load_trained(path_or_run: str | Path, *, use_ema: bool = True, device="cpu",
                 objective: str | None = None, objective_opts: dict | None = None) -> Trained:
    """Load the newest valid checkpoint of a run folder (or the given file); a model folder or a Hub
    id goes to ``from_pretrained`` (which has one set of weights: ``use_ema=False`` is refused).

    ``objective``/``objective_opts`` replace the training objective's name/options (e.g. another
    number of diffusion steps); by default the training ones are used.
    """
    from gladiff import hub

    p = Path(path_or_run)
    if hub.is_model_folder(p) or hub.is_hub_id(path_or_run):
        if not use_ema:
            raise UsageError(f"{path_or_run} is a model folder, which holds one set of weights; "
                             "--raw-weights applies to training run folders only")
        return from_pretrained(path_or_run, device=device, objective=objective, objective_opts=objective_opts)
    path = ckpt.resolve_checkpoint(path_or_run)
    state = ckpt.read_checkpoint(path)
    spec, cfg = state["model_spec"], state["config"]
    model = build_model(spec)
    ckpt.load_model_state(model, ckpt.model_weights(state, "ema" if use_ema else "model"),
                          what=f"checkpoint {path}")
    return Trained(model=model.to(device).eval().requires_grad_(False),
                   objective=_objective(cfg["objective"], cfg.get("objective_opts"), objective, objective_opts),
                   spec=spec, info=state["data_info"], config=cfg, step=int(state["step"]), path=path)


def from_pretrained(name_or_path: str | Path, *, device="cpu", revision: str | None = None,
                    objective: str | None = None, objective_opts: dict | None = None) -> Trained:
    """A model folder (written by ``gladiff export``, ``gladiff convert`` or ``model.save_pretrained``)
    or a Hugging Face Hub id ``owner/name`` (at ``revision``) as a ready ``Trained``: ``.model`` (eval
    mode, on ``device``), ``.objective``, ``.info`` (the data facts: channels, size, classes, VAE),
    ``.sample_shape``, ``.config`` (the folder's ``config.json``). A local folder never touches the
    network. Names, shapes and the config are checked first (``gladiff.hub.load_model``); each problem
    is one error line. ``objective``/``objective_opts`` replace the recorded objective/options."""
    from gladiff import hub

    folder = hub.resolve(name_or_path, revision=revision)
    model, config = hub.load_model(folder)
    recorded = config["objective"] or {}
    if not recorded and objective is None:
        raise UsageError(f"{name_or_path} names no objective (its model has no learned sigma, so it could be "
                         "ddpm or flow): save it with save_pretrained(..., objective=...), or pass "
                         "from_pretrained(..., objective='flow')")
    options = model.config()
    spec = {"name": config["model"]["name"], "input_size": options["input_size"],
            "in_channels": options["in_channels"], "num_classes": options["num_classes"],
            "learn_sigma": options["learn_sigma"], "overrides": {}}
    try:
        obj = _objective(recorded.get("name"), recorded.get("options"), objective, objective_opts)
    except ValueError as err:
        if objective or objective_opts:  # the caller's choice: its own message says what is wrong
            raise
        raise UsageError(f"{folder}/config.json: its objective does not build ({err})") from err
    return Trained(model=model.to(device).eval().requires_grad_(False), objective=obj, spec=spec,
                   info=dict(config["data"]), config=config, step=int(config["source"].get("step", 0)),
                   path=Path(folder))


def _objective(trained_name, trained_opts, name=None, opts=None):
    """The training objective (``trained_name``/``trained_opts``), or ``name`` with its defaults;
    ``opts`` override either."""
    name = name or trained_name
    base = dict(trained_opts or {}) if name == trained_name else {}
    return build_objective(name, {**base, **(opts or {})})


def make_decoder(info: dict, device, vae=None) -> Callable | None:
    """``None`` for pixel models; for latent models a function mapping scaled latents
    ``[B, C, h, w]`` to images ``[B, 3, H, W]`` in [-1, 1] through the VAE (``vae``: an
    ``AutoencoderKL``, a local path or hub id; default the one the latents were extracted with)."""
    if not info.get("is_latent"):
        return None
    from gladiff.data.vae import decode, load_vae

    if vae is None or isinstance(vae, (str, Path)):
        name = vae or info.get("vae")
        if not name:
            raise ValueError("this latent model's checkpoint names no VAE; pass --vae PATH_OR_HUB_ID")
        vae = load_vae(name, device=device)
    return lambda z: decode(vae, z)
