"""Classifier-free guidance: label dropout in training, the guided velocity in sampling.

A conditional net `v(t, x, y)` takes labels `y` in [0, num_classes]; label
`num_classes` is the null class (no label). Training replaces each label by the
null class with probability `drop_prob` (`drop_labels`), so one network learns
both v(t, x | y) and v(t, x | null). Sampling with guidance scale s follows

    v_s(t, x | y) = v(t, x | null) + s * (v(t, x | y) - v(t, x | null))

(DiT's and SD3's convention: s = 1 is the plain conditional field, s = 0 the
unconditional one, s > 1 extrapolates away from it). Other conventions, and
how to convert to this one:
  - Ho & Salimans (2022) write (1 + w) v(y) - w v(null): s = 1 + w (w = 0 is s = 1);
  - some codes mix the unconditional field in with weight w, (1 - w) v(y) + w v(null): s = 1 - w.

For s not in {0, 1} the guided field is ONE batched network call on `[2B, ...]`
inputs (x twice, labels y then null), split into its halves; s = 1 is one call
on `[B, ...]` with the labels and s = 0 one call with the null class (so both
ends are exactly the conditional and the unconditional field: a convolution's
result on CPU can depend on the batch it is computed in, so the halves of a
doubled batch may differ from a single call in the last bits). The solvers
count calls of the guided field (`nfe`); the network passes are
`network_passes(nfe, s)`: nfe for s in {0, 1}, else 2 nfe.

The formula is linear in the network's output, so `guided` applies it to the whole
output, whatever it holds: SF2M's flow and score, MeanFlow's average velocity
(`fm.heads.network`, which every sampler, ODE, SDE or MeanFlow, reads through).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["drop_labels", "guided", "velocity", "network_passes", "check", "null_labels"]


def check(num_classes: int, drop_prob: float = 0.0, guidance: float = 1.0) -> None:
  """ValueError (one sentence) unless the conditioning settings fit together.

  `drop_prob` in [0, 1) and a finite `guidance` for a conditional run
  (`num_classes > 0`); an unconditional run takes neither (0 and 1).
  """
  for name, value in (("drop_prob", drop_prob), ("guidance", guidance)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ValueError(f"cond.{name} must be a finite number, got {value!r}")
  if not 0.0 <= drop_prob < 1.0:
    raise ValueError(f"cond.drop_prob must lie in [0, 1), got {drop_prob!r}")
  if not num_classes and (drop_prob != 0 or guidance != 1):
    raise ValueError(f"cond.drop_prob={drop_prob!r} and cond.guidance={guidance!r} are for conditional runs; "
                     f"set model.num_classes > 0 (the number of classes of the data) or leave them at 0 and 1")
  if num_classes and guidance != 1 and drop_prob == 0:
    raise ValueError(f"cond.guidance={guidance!r} needs the null class trained: set cond.drop_prob > 0 "
                     f"(e.g. 0.1) or cond.guidance=1")


def null_labels(n: int, num_classes: int) -> jax.Array:
  """`[n]` int32, every entry the null class `num_classes`."""
  return jnp.full((n,), num_classes, jnp.int32)


def drop_labels(key: jax.Array, y: jax.Array, num_classes: int, drop_prob: float) -> jax.Array:
  """Each label of `y` `[B]` replaced by the null class `num_classes` with probability `drop_prob`."""
  if not drop_prob:
    return y
  drop = jax.random.bernoulli(key, drop_prob, y.shape)
  return jnp.where(drop, jnp.asarray(num_classes, y.dtype), y)


def guided(apply: Callable, y: jax.Array, guidance: float, num_classes: int) -> Callable:
  """The guided output `f(t, x, **kw)` for labels `y` `[B]` from `apply(t, x, y, **kw) -> [B, ...]`.

  `guidance` is a Python number (it decides the graph): 1 gives `apply(t, x, y)`,
  0 `apply(t, x, null)`, any other s one call of `apply` on the batch doubled,
  `[x; x]` with `[y; null]`. The formula is linear in the output, so `apply` may
  return any network output (a velocity; SF2M's flow and score stacked; MeanFlow's
  average velocity, `fm.heads`). Keyword arguments `kw` (MeanFlow's interval, a
  scalar) pass through unchanged, so they must not depend on the batch.
  """
  if guidance == 1:
    return lambda t, x, **kw: apply(t, x, y, **kw)
  y = jnp.asarray(y, jnp.int32)
  if guidance == 0:
    null = null_labels(y.shape[0], num_classes)
    return lambda t, x, **kw: apply(t, x, null, **kw)
  both = jnp.concatenate([y, null_labels(y.shape[0], num_classes)])
  s = guidance

  def v(t, x, **kw):
    out = apply(t, jnp.concatenate([x, x]), both, **kw)
    v_cond, v_null = out[:x.shape[0]], out[x.shape[0]:]
    return v_null + s * (v_cond - v_null)
  return v


def velocity(model, params, y: jax.Array, guidance: float = 1.0) -> Callable:
  """`v(t, x)` (scalar t) of a conditional velocity `model` for labels `y` `[B]` at guidance scale `guidance`.

  Any head (SF2M's flow and score, MeanFlow's average velocity): `fm.heads.Head`'s fields with `guidance=`.
  """
  def apply(t, x, labels):
    return model.apply(params, jnp.full((x.shape[0],), t, x.dtype), x, labels)
  return guided(apply, y, guidance, model.num_classes)


def network_passes(nfe, guidance: float):
  """Network passes behind `nfe` evaluations of the guided field: nfe for s in {0, 1}, else 2 nfe.

  (For other s each evaluation is one batched call on 2B inputs: two passes' work.)
  """
  return nfe if guidance in (0, 1) else 2 * nfe
