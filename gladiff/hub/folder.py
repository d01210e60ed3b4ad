"""A shared model is a folder of three files, the layout people know from the Hugging Face Hub:

    model.safetensors   the weights (one tensor per ``state_dict`` name, no code, no pickle)
    config.json         what the weights are: the model (zoo name, family, every option), the
                        training data facts (image size, channels, classes, null class, latent or
                        pixel, VAE id or folder), the objective and its options, where it came from,
                        and the SHA-256 of model.safetensors
    README.md           the model card (``card.py``)

``save_pretrained`` writes it (each file atomically); ``load_model`` reads it back and checks
everything it can before a weight is used: the format tag, every config section and its types, that
the sections agree with each other (channels, classes, learned sigma), the checksum, that the
safetensors file is whole, and every parameter name and shape against the network the config
builds. Each problem is one ``UsageError``/``StorageError`` line naming the folder. The objective is
recorded as plain data; building it is the caller's (``gladiff.sample.load.from_pretrained``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from gladiff.errors import MissingDependencyError, StorageError, UsageError, check_writable_dir, writing

FORMAT = "gladiff-model-1"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_DATA_KEYS = ("image_size", "sample_size", "in_channels", "num_classes", "is_latent", "vae", "classes")


# ----------------------------------------------------------------------------- config
def model_config(model: torch.nn.Module, *, objective=None, data: dict | None = None,
                 source: dict | None = None) -> dict:
    """The ``config.json`` of ``model`` (a gladiff DiG/DiT) without the checksum.

    ``objective``: an objective object (its ``name`` and ``options()``), a name (its defaults), a
    mapping ``{"name", "options"}``, or None (DDPM's defaults for a model with learned sigma, else
    no objective). ``data``: the training data facts (``gladiff.train.build.data_info``); missing
    ones are derived from the model (pixels, classes named by their index).
    """
    options = model.config()
    size = options["input_size"]
    derived = {"image_size": size, "sample_size": size, "in_channels": options["in_channels"],
               "num_classes": options["num_classes"], "is_latent": False, "vae": None,
               "classes": [str(i) for i in range(options["num_classes"])]}
    data = {**derived, **{k: v for k, v in (data or {}).items() if k in _DATA_KEYS}}
    family = getattr(model, "family", type(model).__name__)
    return {
        "format": FORMAT,
        "gladiff_version": _version(),
        "model": {"name": getattr(model, "name", None) or f"{family}-custom", "family": family,
                  "options": options},
        "null_class": model.null_label,
        "data": data,
        "objective": _objective_entry(objective, options["learn_sigma"]),
        "source": dict(source or {}),
    }


def _objective_entry(objective, learn_sigma: bool) -> dict | None:
    if objective is None:
        return {"name": "ddpm", "options": {"learn_sigma": True}} if learn_sigma else None
    if isinstance(objective, str):
        return {"name": objective, "options": {"learn_sigma": learn_sigma} if objective == "ddpm" else {}}
    if isinstance(objective, dict):
        if set(objective) - {"name", "options"} or not isinstance(objective.get("name"), str):
            raise UsageError(f"objective must be an objective, its name or {{'name', 'options'}}, got {objective!r}")
        return {"name": objective["name"], "options": dict(objective.get("options") or {})}
    return {"name": objective.name, "options": objective.options()}


def _version() -> str:
    from gladiff import __version__

    return __version__


def check_config(config, where: str) -> dict:
    """``config`` (a parsed ``config.json``) if it is a complete, self-consistent gladiff model
    config; else a ``UsageError`` naming ``where`` and the first problem."""
    def bad(problem: str):
        return UsageError(f"{where}: {problem}; write the folder again with gladiff export or save_pretrained")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UsageError(f"{where} was not written by gladiff (format {found!r}, expected {FORMAT!r}); "
                         "a gladiff model folder comes from gladiff export, gladiff convert or save_pretrained")
    for key, kind in (("model", dict), ("data", dict), ("source", dict)):
        if not isinstance(config.get(key), kind):
            raise bad(f"{key!r} is missing or not a mapping")
    model = config["model"]
    if not isinstance(model.get("family"), str) or not isinstance(model.get("options"), dict):
        raise bad("model needs a 'family' name and an 'options' mapping")
    options = model["options"]
    missing = [k for k in ("input_size", "in_channels", "num_classes", "learn_sigma") if k not in options]
    if missing:
        raise bad(f"model options lack {missing}")
    data = config["data"]
    missing = [k for k in _DATA_KEYS if k not in data]
    if missing:
        raise bad(f"data lacks {missing}")
    for key in ("in_channels", "num_classes"):
        if data[key] != options[key]:
            raise bad(f"data {key} {data[key]!r} disagrees with the model's {options[key]!r}")
    if data["sample_size"] != options["input_size"]:
        raise bad(f"data sample_size {data['sample_size']!r} disagrees with the model's input_size "
                  f"{options['input_size']!r}")
    if not isinstance(data["classes"], list) or len(data["classes"]) != data["num_classes"]:
        raise bad(f"data classes must list {data['num_classes']} names")
    if data["is_latent"] and not data["vae"]:
        raise bad("a latent model must name its VAE (data vae)")
    has_null = float(options.get("class_dropout_prob", 0.1)) > 0
    null = options["num_classes"] if has_null else None
    if config.get("null_class") != null:
        raise bad(f"null_class {config.get('null_class')!r} disagrees with the model's {null!r}")
    objective = config.get("objective")
    if objective is not None:
        if not isinstance(objective, dict) or not isinstance(objective.get("name"), str) \
                or not isinstance(objective.get("options", {}), dict):
            raise bad("objective must be null or {'name': ..., 'options': {...}}")
        learn = objective.get("options", {}).get("learn_sigma", objective["name"] == "ddpm")
        if bool(learn) != bool(options["learn_sigma"]):
            raise bad(f"the objective's learn_sigma {bool(learn)} disagrees with the model's "
                      f"{bool(options['learn_sigma'])}")
    return config


def read_config(folder: str | Path) -> dict:
    """The checked ``config.json`` of model folder ``folder`` (``check_config``). A missing folder
    or file, a training run folder given instead, or text that is not JSON is one clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise UsageError(f"{folder} is a file; give a model folder (written by gladiff export or "
                             "save_pretrained) or a Hugging Face Hub id")
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        if (folder / "checkpoints").is_dir():
            raise UsageError(f"{folder} is a training run folder, not a model folder; export it with "
                             f"gladiff export {folder} OUT_DIR (gladiff sample also takes the run folder)")
        raise UsageError(f"{folder} has no {CONFIG_NAME}: not a model folder (those come from gladiff export, "
                         "gladiff convert or save_pretrained)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); write the folder again") from err
    return check_config(config, str(path))


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is meant as a model folder: a folder with a ``config.json`` and no training
    ``checkpoints/`` (whether the config is a good one is ``read_config``'s to say)."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and not (path / "checkpoints").is_dir()


def written_by_gladiff(path: str | Path) -> bool:
    """Whether folder ``path`` holds a ``config.json`` with gladiff's format tag (not checked further)."""
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- weights
def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as err:
        raise MissingDependencyError("model folders store their weights with safetensors, which is not "
                                     "installed: pip install safetensors") from err
    return st


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def read_weights(folder: str | Path, config: dict | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``folder/model.safetensors``. A missing, truncated or otherwise damaged
    file (the safetensors header does not cover the file, or the SHA-256 recorded in ``config``
    differs) is a ``StorageError`` that says so."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise StorageError(f"{path} is missing; the model folder is incomplete (export or download it again)")
    expected = (config or {}).get("weights_sha256")
    if expected and file_sha256(path) != expected:
        raise StorageError(f"{path} is damaged: its SHA-256 differs from the one in {CONFIG_NAME} "
                           "(export or download it again)")
    st = _safetensors()
    try:
        return st.load_file(str(path))
    except Exception as err:  # safetensors' SafetensorError, not importable by name across versions
        detail = " ".join(str(err).split())
        raise StorageError(f"{path} is truncated or not a safetensors file ({detail}); "
                           "export or download it again") from err


def build_model(config: dict) -> torch.nn.Module:
    """The network a checked config describes, with fresh weights (``config.model``)."""
    from gladiff.models.zoo import FAMILIES

    family = config["model"]["family"]
    if family not in FAMILIES:
        raise UsageError(f"config.json names model family {family!r}; this gladiff knows {', '.join(FAMILIES)}")
    try:
        model = FAMILIES[family](**config["model"]["options"])
    except (TypeError, ValueError) as err:
        raise UsageError(f"config.json: the model options do not build a {family} ({err})") from err
    model.name = config["model"].get("name") or family
    return model


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """``(model, config)`` from a model folder: the network ``config.json`` describes, carrying the
    weights of ``model.safetensors`` (CPU, float32 as stored, eval mode). Every name and shape must
    match: a difference is a ``UsageError`` that lists what differs."""
    from gladiff.train.checkpoint import load_model_state

    folder = Path(folder)
    config = read_config(folder)
    model = build_model(config)
    state = read_weights(folder, config)
    try:
        load_model_state(model, state, what="weights")
    except ValueError as err:
        detail = str(err).split("for a different model: ", 1)[-1]
        raise UsageError(f"{folder / WEIGHTS_NAME} does not match its config.json, which describes "
                         f"{config['model']['name']} ({_describe(config['model']['options'])}): {detail}") from err
    return model.eval(), config


def _describe(options: dict) -> str:
    keys = ("depth", "hidden_size", "num_heads", "patch_size", "in_channels", "num_classes", "learn_sigma")
    return ", ".join(f"{k}={options[k]}" for k in keys if k in options)


# ----------------------------------------------------------------------------- writing
def check_out_dir(out: str | Path) -> Path:
    """``UsageError`` unless ``out`` can take a model folder: new, empty, or an earlier model folder
    (whose files get replaced); never a file, a run folder or a folder holding other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file; give a new folder")
    if (out / "checkpoints").is_dir():
        raise UsageError(f"output folder {out} is a run folder; write the model into a new folder")
    if out.is_dir() and not written_by_gladiff(out):
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES and not p.name.startswith("."))
        if others:
            raise UsageError(f"output folder {out} is not empty ({', '.join(others[:3])}"
                             f"{', ...' if len(others) > 3 else ''}); give a new folder or an earlier export")
    return check_writable_dir(out, "output folder")



def save_pretrained(model: torch.nn.Module, folder: str | Path, *, objective=None, data: dict | None = None,
                    card=None, source: dict | None = None) -> Path:
    """Write ``model`` (its weights as they are, moved to the CPU) as a model folder; see the module
    docstring and ``model_config`` for ``objective``/``data``/``source``. ``card``: the README.md
    text, or a function of the config that returns it (default: generated from the config).
    Existing model files in ``folder`` are replaced, each atomically; any other file there is left
    alone. Returns the folder."""
    from .card import model_card

    config = check_config(model_config(model, objective=objective, data=data, source=source),
                          "the config being written")
    if card is None:
        card = model_card(config, parameters=sum(p.numel() for p in model.parameters()))
    elif callable(card):
        card = card(config)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return write_folder(folder, state, config, card)


def write_folder(folder: str | Path, state: dict[str, torch.Tensor], config: dict, card: str) -> Path:
    """Write the three files: weights first, then ``config.json`` with their SHA-256, then the card."""
    folder = check_writable_dir(folder, "model folder")
    st = _safetensors()
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    with writing("the model weights", weights):
        _atomic(weights, lambda tmp: st.save_file(state, str(tmp), metadata={"format": "pt", "gladiff": FORMAT}))
    config = {**config, "weights_sha256": file_sha256(weights)}
    text = json.dumps(config, indent=2) + "\n"
    with writing("the model config", folder / CONFIG_NAME):
        _atomic(folder / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    with writing("the model card", folder / CARD_NAME):
        _atomic(folder / CARD_NAME, lambda tmp: tmp.write_text(card))
    return folder


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its file private (0600): these are to share
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
