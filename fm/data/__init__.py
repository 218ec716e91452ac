"""Data sources: 2D toy distributions (`toys`)."""
from fm.data import toys

__all__ = ["toys"]
