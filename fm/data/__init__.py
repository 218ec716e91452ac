"""Data sources: the `base.Source` interface, 2D toys (`toys`), image datasets (`images`, read
from an image folder by `folder`)."""
from fm.data import base, folder, images, toys

__all__ = ["base", "folder", "images", "toys"]
