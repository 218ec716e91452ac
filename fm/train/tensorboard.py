"""TensorBoard event files (scalars and images) through tensorboardX; no TensorFlow needed.

Only process 0 writes; on other processes every call is a no-op.
"""
from __future__ import annotations

import os

import numpy as np

from fm.io import files

__all__ = ["Writer"]


class Writer:
  """`workdir/tensorboard/` events: `scalars(dict, step)`, `image(tag, uint8 [H, W, C], step)`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled and files.is_writer():
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def scalars(self, values: dict[str, float], step: int) -> None:
    if self._writer is not None:
      for k, v in values.items():
        if k != "step" and np.isscalar(v):
          self._writer.add_scalar(k, float(v), step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, np.asarray(image), step, dataformats="HWC")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
