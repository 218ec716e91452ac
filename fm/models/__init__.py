"""Velocity networks `v_theta(t, x)` as Flax Linen modules, one registry.

`model = make("mlp", width=64, depth=3, activation="selu")`; call it as
`model.apply(params, t, x)` with t `[B]` and x `[B, *shape]` (deterministic), or
`model.apply(params, t, x, train=True, rngs={"dropout": key})` in training.
Image nets (`make("unet", ...)`, `make("dit", ...)`) take x `[B, H, W, C]`.
Options are the module's attributes; `make` refuses unknown ones.
"""
from __future__ import annotations

import dataclasses

from fm.models import dit, unet
from fm.models.dit import DiT
from fm.models.mlp import MLP
from fm.models.unet import UNet

__all__ = ["DiT", "MLP", "UNet", "dit", "unet", "make", "check_shape", "NAMES"]

_REGISTRY = {"mlp": MLP, "unet": UNet, "dit": DiT}
NAMES = tuple(_REGISTRY)


def make(name: str, **kwargs):
  """Builds a registered model; ValueError names bad names or arguments."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(NAMES)}")
  cls = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  bad = set(kwargs) - fields
  if bad:
    raise ValueError(f"model {name!r} got unknown argument(s) {sorted(bad)}; valid: {sorted(fields)}")
  module = cls(**kwargs)
  if hasattr(module, "check"):   # the module validates its own option values
    module.check()
  return module


def check_shape(module, shape) -> None:
  """ValueError (one sentence) unless `module` takes examples of `shape` (e.g. `(32, 32, 3)`).

  Asked before any work, from the data's shape: a module with shape rules (levels,
  patches, attention resolutions) defines `check_shape(shape)`; others take any shape.
  """
  if hasattr(module, "check_shape"):
    module.check_shape(tuple(int(s) for s in shape))
