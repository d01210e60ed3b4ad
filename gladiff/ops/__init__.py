"""Operators (token mixers). Imports nothing from the rest of gladiff."""
from .dwconv import dwconv3x3
from .gla import gla

__all__ = ["gla", "dwconv3x3"]
