"""gladiff: DiG - diffusion transformers with Gated Linear Attention and SREM - and DiT baselines."""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "from_pretrained", "list_models", "__version__"]


def __getattr__(name: str):
    # gladiff.from_pretrained is the sampling pipeline's loader; imported on first use so that
    # `import gladiff` stays the models alone.
    if name == "from_pretrained":
        from .sample.load import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'gladiff' has no attribute {name!r}")
