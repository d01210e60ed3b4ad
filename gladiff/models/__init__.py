"""Models: DiG (GLA + SREM) and the DiT baseline, sharing one DiT-style skeleton."""
from .backbone import DiffusionTransformer
from .compiled import COMPILE_SCOPES, check_compile_scope, compile_model, uncompile_blocks
from .dig import DiG, DiGBlock, GatedLinearAttention, Orientation, SwiGLU, block_orientation
from .dit import DiT, DiTBlock
from .zoo import create_model, list_models, model_config

__all__ = ["COMPILE_SCOPES", "check_compile_scope", "compile_model", "uncompile_blocks", "DiffusionTransformer",
           "DiG", "DiGBlock", "DiT", "DiTBlock", "GatedLinearAttention", "SwiGLU", "Orientation",
           "block_orientation", "create_model", "list_models", "model_config"]
