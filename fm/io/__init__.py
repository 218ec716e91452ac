"""File I/O, a leaf package (it imports nothing else of fm): `files` is the one way fm writes a file
(atomic, process 0 only); `torch_pickle` reads `.pt` / `.pth` files without torch."""
from fm.io import files, torch_pickle

__all__ = ["files", "torch_pickle"]
