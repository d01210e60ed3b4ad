"""Operators (token mixers). Imports nothing from the rest of gladiff."""
from .gla import gla

__all__ = ["gla"]
