"""Time samplers t ~ p(t) on [0, 1] for the flow-matching loss.

`uniform` is the CFM default; `logit_normal(m, s)` is SD3's choice (Esser et al.
2024): t = sigmoid(m + s * n), n ~ N(0, 1), which puts more weight mid-path.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["Uniform", "LogitNormal", "make", "NAMES"]


@dataclasses.dataclass(frozen=True)
class Uniform:
  """t ~ U[0, 1]."""

  def __call__(self, key, n: int, dtype=jnp.float32):
    """Returns `[n]` times."""
    return jax.random.uniform(key, (n,), dtype)


@dataclasses.dataclass(frozen=True)
class LogitNormal:
  """t = sigmoid(m + s n), n ~ N(0, 1) (SD3)."""
  m: float = 0.0
  s: float = 1.0

  def __call__(self, key, n: int, dtype=jnp.float32):
    """Returns `[n]` times in (0, 1)."""
    return jax.nn.sigmoid(self.m + self.s * jax.random.normal(key, (n,), dtype))


_REGISTRY = {"uniform": Uniform, "logit_normal": LogitNormal}
NAMES = tuple(_REGISTRY)


def make(name: str = "uniform", **kwargs):
  """`make("uniform")` or `make("logit_normal", m=0.0, s=1.0)`."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown time sampler {name!r}; valid time samplers: {', '.join(NAMES)}")
  fields = {f.name for f in dataclasses.fields(_REGISTRY[name])}
  bad = set(kwargs) - fields
  if bad:
    raise ValueError(f"time sampler {name!r} got unknown argument(s) {sorted(bad)}; valid: {sorted(fields)}")
  if name == "logit_normal" and not (math.isfinite(kwargs.get("s", 1.0)) and kwargs.get("s", 1.0) > 0):
    raise ValueError(f"logit_normal needs s > 0, got {kwargs['s']!r}")
  return _REGISTRY[name](**kwargs)
