"""gladiff: DiG - diffusion transformers with Gated Linear Attention and SREM - and DiT baselines."""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
