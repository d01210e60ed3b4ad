"""Sharing models: folders of safetensors weights + ``config.json`` + a model card (the Hugging Face
Hub's layout), from training runs (``export_run``), from any gladiff model (``save_pretrained``),
from the authors' DiG and DiT checkpoints (``convert_official``), to and from the Hub (``resolve``,
``push_to_hub``). Loading a folder into a ready model and objective is
``gladiff.from_pretrained``. docs/sharing.md."""
from .folder import (CARD_NAME, CONFIG_NAME, FORMAT, WEIGHTS_NAME, build_model, check_config, is_model_folder,
                     load_model, model_config, read_config, read_weights, save_pretrained)
from .export import export_run
from .official import convert_official
from .remote import is_hub_id, looks_like_hub_id, push_to_hub, resolve

__all__ = ["CARD_NAME", "CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "build_model", "check_config", "convert_official", "export_run",
           "is_hub_id", "is_model_folder", "load_model", "looks_like_hub_id", "model_config", "push_to_hub", "read_config",
           "read_weights", "resolve", "save_pretrained"]

