"""Training pipeline: config -> data, model, objective -> resumable training loop -> checkpoints.

``train(resolve_config(...))`` is what ``gladiff train`` runs; see ``loop.py`` for the loop itself.
"""
from .config import TrainConfig, resolve_config, save_config
from .loop import NonFiniteLossError, TrainResult, train

__all__ = ["TrainConfig", "resolve_config", "save_config", "train", "TrainResult", "NonFiniteLossError"]
