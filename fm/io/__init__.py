"""Reading files written by other frameworks: `torch_pickle` reads `.pt` / `.pth` without torch."""
from fm.io import torch_pickle

__all__ = ["torch_pickle"]
