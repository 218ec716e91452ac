"""MeanFlow (Geng et al. 2025): learn the average velocity and generate in one step.

The average velocity between the state's time t and a later time r >= t is
u(z_t, t, r) = (z_r - z_t) / (r - t) along the flow. Differentiating
(t - r) u = z_t - z_r in t (r fixed) gives the MeanFlow identity

    u(z_t, t, r) = v(z_t, t) - (t - r) d/dt u(z_t, t, r),
    d/dt u = v . grad_z u + d_t u        (one `jax.jvp` along (v, 1, 0) in (z, t, r)),

which is the paper's equation in fm's time direction (t = 0 noise, t = 1 data; the
paper runs from noise at 1 to data at 0, r <= t; with tau = 1 - time both read the same).
The loss regresses u_theta on the stop-gradient target with the conditional velocity v_t
of the path, with the paper's adaptive weight w = 1 / (||err||^2 + c)^p per sample.

The network is conditioned on (t, r - t): its second time `t2` is the interval length,
as in the official code's (t, t - r). With r = t (interval 0) it is the ordinary
velocity field, so a fraction of each batch trains plain flow matching.
One step: z_1 = z_0 + u(z_0, 0, 1) (`fm.solvers.meanflow`).

The jvp runs inside `fm.models.layers.forward_mode()`, where convolutions are XLA's own
(fm's CPU convolution has a custom gradient, fast inside the trainer's loop, but no
forward-mode rule). On CPU the loss therefore takes the derivative from a separate
forward-mode pass on stop-gradient parameters and u from an ordinary pass, whose
gradient is fm's fast one: one extra forward pass, instead of XLA:CPU's gradient
convolutions, which run as naive loop nests inside `lax.while_loop` (a CIFAR smoke
MeanFlow step went from minutes to a fraction of a second). Elsewhere one jvp gives
both (`MeanFlowLoss.fused`); the two give the same loss and gradient (tests/test_meanflow.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from fm.models import layers

__all__ = ["TimePairSampler", "MeanFlowLoss", "average_velocity_target"]


@dataclasses.dataclass(frozen=True)
class TimePairSampler:
  """(t, r) with t <= r: two logit-normal draws in the paper's time, sorted; a fraction r = t.

  The paper draws tau = sigmoid(m + s n) with tau = 1 - time, so in fm's time each draw is
  1 - sigmoid(m + s n) = sigmoid(-m - s n). The first `round(n * equal_fraction)` rows get
  r = t (the official code's `data_proportion`: a fixed count, not a coin per row).

  Defaults are the paper's CIFAR-10 values (ImageNet: m = -0.4, s = 1, equal_fraction = 0.75).

  Attributes:
    m, s: logit-normal location and scale in the paper's time.
    equal_fraction: fraction of rows with r = t (1 - the paper's "ratio of r != t").
  """
  m: float = -2.0
  s: float = 2.0
  equal_fraction: float = 0.25

  def __post_init__(self):
    if not (math.isfinite(self.s) and self.s > 0):
      raise ValueError(f"meanflow time scale s must be a finite number > 0, got {self.s!r}")
    if not math.isfinite(self.m):
      raise ValueError(f"meanflow time location m must be finite, got {self.m!r}")
    if not 0.0 <= self.equal_fraction <= 1.0:
      raise ValueError(f"meanflow equal_fraction must lie in [0, 1], got {self.equal_fraction!r}")

  def __call__(self, key, n: int, dtype=jnp.float32):
    """Returns `(t, r)`, each `[n]`, 0 < t <= r < 1."""
    a = jax.nn.sigmoid(-(self.m + self.s * jax.random.normal(key, (2, n), dtype)))
    t, r = jnp.minimum(a[0], a[1]), jnp.maximum(a[0], a[1])
    equal = jnp.arange(n) < int(round(n * self.equal_fraction))
    return t, jnp.where(equal, t, r)


def average_velocity_target(u_fn: Callable, z, t, r, v):
  """`(u, u_tgt)`: u = u_fn(z, t, r) and the MeanFlow target v - (t - r) d/dt u (no stop-gradient).

  Args:
    u_fn: `u_fn(z, t, r) -> [B, *shape]`, t and r `[B]`.
    z: `[B, *shape]` points z_t; t, r: `[B]` times; v: `[B, *shape]` velocity at (z, t).
  """
  u, dudt = jax.jvp(u_fn, (z, t, r), (v, jnp.ones_like(t), jnp.zeros_like(r)))
  gap = (t - r).reshape(t.shape + (1,) * (z.ndim - 1))
  return u, v - gap * dudt


@dataclasses.dataclass(frozen=True)
class MeanFlowLoss:
  """The MeanFlow loss with adaptive weighting.

  Attributes:
    path: a probability path (`fm.paths`): gives z_t and the conditional velocity v_t.
    times: the (t, r) sampler.
    p, c: adaptive weight w = 1 / (sum(err^2) + c)^p per sample, stop-gradient
      (p = 0: plain squared error; defaults: the paper's CIFAR-10 p = 0.75, c = 1e-3; ImageNet p = 1).
    fused: take u from the jvp's primal output (one pass, as the paper's code) rather than
      from a second, ordinary pass. None: fused except on CPU (module docstring).
  """
  path: object
  times: TimePairSampler
  p: float = 0.75
  c: float = 1e-3
  fused: bool | None = None

  def __post_init__(self):
    if not (math.isfinite(self.p) and self.p >= 0):
      raise ValueError(f"meanflow adaptive weight power p must be a finite number >= 0, got {self.p!r}")
    if not (math.isfinite(self.c) and self.c > 0):
      raise ValueError(f"meanflow adaptive weight constant c must be a finite number > 0, got {self.c!r}")

  def __call__(self, apply_fn, params, key, x0, x1):
    """Loss on one (already coupled) batch.

    Args:
      apply_fn: `apply_fn(params, t, x, t2) -> u`: t, t2 `[B]`, x and u `[B, *shape]`;
        t2 receives the interval r - t.
      params: network parameters.
      key: PRNG key for times and path noise.
      x0, x1: source and target batches `[B, *shape]`.

    Returns:
      `(loss, aux)`: the mean over the batch of w * sum(err^2), and diagnostics
      (`mse`: mean of the unweighted squared error per element, `fraction_equal`).
    """
    k_t, k_eps = jax.random.split(key)
    t, r = self.times(k_t, x0.shape[0], x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    z, v = self.path.interpolate(x0, x1, t, eps)
    fused = jax.default_backend() != "cpu" if self.fused is None else self.fused
    u_fn = lambda p: (lambda z, t, r: apply_fn(p, t, z, r - t))
    with layers.forward_mode():
      u, target = average_velocity_target(u_fn(params if fused else jax.lax.stop_gradient(params)), z, t, r, v)
    if not fused:
      u = u_fn(params)(z, t, r)
    err = jnp.sum(jnp.square(u - jax.lax.stop_gradient(target)), axis=tuple(range(1, z.ndim)))
    w = jax.lax.stop_gradient(1.0 / (err + self.c) ** self.p)
    loss = jnp.mean(w * err)
    return loss, {"loss": loss, "mse": jnp.mean(err) / math.prod(z.shape[1:]),
                  "fraction_equal": jnp.mean((r == t).astype(jnp.float32))}
