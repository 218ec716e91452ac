"""The interface between data and the trainer: a `Source`.

A source tells the trainer the shape of one example and how to draw a batch
inside the jitted step: `batch_fn(key, data) -> (x0, x1)`, both `[B, *shape]`
(a conditional run's source, `labelled=True`, returns `(x0, x1, y1)` with the
int32 class labels `y1` `[B]` of x1, drawn with the same indices),
where `data` is the pytree of arrays the source holds on device (`None` for
samplers such as the 2D toys). x0 comes from the source distribution (noise or
a toy), x1 from the data. The trainer never imports a concrete source.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

__all__ = ["Source", "BatchFn"]

# batch_fn(key, data) -> (x0 [B, *shape], x1 [B, *shape]) or, labelled, (x0, x1, y1 [B] int32)
BatchFn = Callable[[jax.Array, Any], tuple[jax.Array, ...]]


@dataclasses.dataclass(frozen=True)
class Source:
  """What the trainer, sampler and evaluators need to know about the data.

  Attributes:
    name: registry name ("toy", "images", ...).
    shape: shape of one example, e.g. `(2,)` or `(32, 32, 3)` (images are HWC).
    batch_fn: draws one training batch inside the jitted step.
    data: arrays held on device for `batch_fn` (or None).
    sample_x0: `sample_x0(key, n) -> [n, *shape]`, the source distribution
      used to generate samples (N(0, I) for images).
    description: provenance for results files (dataset, path, content hash).
    kind: "points" (toys: scatter plots, W2) or "images" (grids, FID).
    classes: the class names of the data (index = label), or None if it has no labels.
    class_probs: the frequency of each class in the training data (what
      conditional sampling draws labels from), or None.
    labelled: whether `batch_fn` returns the labels `y1` too (conditional runs).
    info: identity and load report kept in source.json: `sha256` (content key
      of the data, None where there is none), `skipped` (undecodable files),
      `converted` ({mode: count} of images converted to RGB).
  """
  name: str
  shape: tuple[int, ...]
  batch_fn: BatchFn
  data: Any
  sample_x0: Callable[[jax.Array, int], jax.Array]
  description: str
  kind: str = "points"
  classes: tuple[str, ...] | None = None
  class_probs: tuple[float, ...] | None = None
  labelled: bool = False
  info: dict = dataclasses.field(default_factory=dict)
