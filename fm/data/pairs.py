"""Stored pairs `(z0, z1)` as a source (reflow): minibatches drawn on device.

The pairs live on device as `data = {"z0": [N, *shape], "z1": [N, *shape]}`;
step `s` draws `batch_size` indices with replacement from its own key, so a
resumed run draws the same minibatches. Everything else (shape, x0 sampler,
kind) is the base source's.
"""
from __future__ import annotations

import dataclasses

import jax

from fm.data.base import Source

__all__ = ["source"]


def source(base: Source, pairs: dict, batch_size: int, description: str = "") -> Source:
  """A `Source` drawing minibatches of `pairs` (`{"z0", "z1"}`, `[N, *base.shape]`)."""
  def batch_fn(key, data):
    idx = jax.random.randint(key, (batch_size,), 0, data["z0"].shape[0])
    return data["z0"][idx], data["z1"][idx]

  return dataclasses.replace(base, batch_fn=batch_fn, data={"z0": pairs["z0"], "z1": pairs["z1"]},
                             description=description or f"reflow pairs of {base.description}")
