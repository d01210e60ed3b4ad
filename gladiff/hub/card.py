"""The model card (``README.md``) of a model folder, generated from its config and whatever the
source knows: the training config and steps of a run, its evaluation numbers, the checkpoint a
conversion came from. Plain Markdown with the Hub's YAML header, so the Hub shows it as the model's
page."""
from __future__ import annotations

import json

import yaml


def model_card(config: dict, *, parameters: int | None = None, training: dict | None = None,
               evaluations: list[tuple[str, dict]] | None = None, last_log: dict | None = None,
               origin: str | None = None, notes: list[str] | None = None) -> str:
    """Markdown for the model described by ``config`` (a model folder's ``config.json``).

    ``parameters``: the parameter count; ``training``: the run's resolved training config;
    ``evaluations``: ``(file name, results)`` pairs, results as ``gladiff eval --json`` or the demo's
    ``score.json`` write them; ``last_log``: the last ``metrics.jsonl`` row; ``origin``: one sentence
    on where the weights come from (default: from ``config["source"]``); ``notes``: paragraphs
    for a "Notes" section.
    """
    model, data, objective, source = config["model"], config["data"], config.get("objective"), config["source"]
    name, options = model["name"], model["options"]
    family = model["family"]
    tags = ["gladiff", "diffusion", "class-conditional", "image-generation", family.lower()]
    if family == "DiG":
        tags.append("gated-linear-attention")
    lines = ["---", yaml.safe_dump({"library_name": "gladiff", "tags": tags}, sort_keys=False).strip(), "---", "",
             f"# {name}", ""]
    kind = (f"SD-VAE latents ({data['sample_size']}x{data['sample_size']}x{data['in_channels']}) of "
            f"{data['image_size']} px images" if data["is_latent"]
            else f"{data['image_size']} px images with {data['in_channels']} channel(s)")
    lines += [f"A class-conditional {_FAMILY_WORDS.get(family, family)} generating {kind}, "
              f"{data['num_classes']} classes, for the `gladiff` library.", ""]
    lines += ["| | |", "|---|---|",
              f"| model | {name}: " + ", ".join(f"{k} {v}" for k, v in options.items()) + " |"]
    if parameters is not None:
        lines.append(f"| parameters | {parameters:,} |")
    classes = data["classes"]
    shown = ", ".join(str(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
    null = config.get("null_class")
    lines.append(f"| classes | {data['num_classes']} ({shown})"
                 + (f"; null class {null} (classifier-free guidance)" if null is not None else "; no null class")
                 + " |")
    if data["is_latent"]:
        lines.append(f"| VAE | `{data['vae']}` (decodes the samples; `--vae` picks another) |")
    if objective is not None:
        opts = ", ".join(f"{k} {v}" for k, v in objective.get("options", {}).items())
        lines.append(f"| objective | {objective['name']}" + (f" ({opts})" if opts else "") + " |")
    lines.append(f"| weights | {origin or _origin(source)} |")
    lines += ["", "## Use", "", "```bash",
              "gladiff sample THIS_FOLDER_OR_HUB_ID --out samples.npz --out grid.png --per-class 10 \\",
              "    --sampler dpm++2m --steps 20 --cfg-scale 1.5",
              "```", "", "```python", "import torch", "import gladiff", "",
              'pipe = gladiff.from_pretrained("THIS_FOLDER_OR_HUB_ID")   # .model, .objective, .info, .sample_shape',
              f"y = torch.arange(8) % {data['num_classes']}                        # class labels",
              "x = pipe.objective.sample(pipe.model, (8, *pipe.sample_shape), y, sampler=\"dpm++2m\", steps=20,",
              "                          cfg_scale=1.5, seed=0)"]
    if data["is_latent"]:
        lines += ["images = gladiff.sample.make_decoder(pipe.info, \"cpu\")(x)   # latents -> [-1, 1] pixels"]
    lines += ["```", ""]
    if notes:
        lines += ["## Notes", ""] + [p + "\n" for p in notes]
    if last_log or (training and "steps" in training):
        lines += ["## Training", ""]
        if "step" in source:
            lines.append(f"Trained for {source['step']:,} steps"
                         + (f" of {training['steps']:,} planned" if training and training.get("steps", source["step"])
                            != source["step"] else "") + ".")
        if last_log:
            shown = ", ".join(f"{k} {_num(v)}" for k, v in last_log.items() if k != "step")
            lines.append(f"Last logged values (step {last_log.get('step')}): {shown}.")
        lines.append("")
    if evaluations:
        lines += ["## Evaluation", "", "| file | metric | value |", "|---|---|---|"]
        for fname, results in evaluations:
            for key, value in _numbers(results):
                lines.append(f"| {fname} | {key} | {_num(value)} |")
        lines.append("")
    if training:
        shown = {k: v for k, v in training.items() if k != "run_dir"}  # a path on the trainer's machine
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(shown, sort_keys=False).strip(), "```", ""]
    lines += ["## Files", "", "`model.safetensors` (weights), `config.json` (model, data, objective, source; "
              "read by `gladiff.from_pretrained`), this card.", ""]
    return "\n".join(lines)


_FAMILY_WORDS = {"DiG": "DiG (diffusion transformer with Gated Linear Attention)",
                 "DiT": "DiT (diffusion transformer)"}


def _origin(source: dict) -> str:
    kind = source.get("kind")
    if kind == "gladiff-run":
        return (f"{source.get('weights', 'ema').upper()} weights of a gladiff training run, "
                f"checkpoint {source.get('checkpoint')} (step {source.get('step')})")
    if kind in ("dig-official", "dit-official"):
        return (f"converted from the official {'DiG' if kind == 'dig-official' else 'DiT'} checkpoint "
                f"{source.get('checkpoint')} ({source.get('weights')} weights, SHA-256 "
                f"{str(source.get('checkpoint_sha256', ''))[:12]})")
    return "saved with save_pretrained"


def _numbers(results: dict, prefix: str = ""):
    """``(dotted key, number)`` for every number in a nested results mapping."""
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numbers(value, name + ".")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            yield name, value


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, (int, str)) else str(value)
