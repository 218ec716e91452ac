"""Probability paths p_t(x | x0, x1) = N(mu_t, sigma_t^2 I) and their conditional velocities.

Every path maps a pair (x0, x1) of batches `[B, *shape]`, times `t` `[B]` (or a
scalar) and Gaussian noise `eps` `[B, *shape]` to the point `x_t = mu_t + sigma_t * eps`
and the conditional target velocity `u_t`, with d/dt x_t = u_t for fixed eps.

==========  =====================================  ==========================  =====================================
name        mu_t                                   sigma_t                     u_t
==========  =====================================  ==========================  =====================================
linear      (1-t) x0 + t x1                        sigma                       x1 - x0
sb          (1-t) x0 + t x1                        sigma sqrt(t (1-t))         (1-2t)/(2t(1-t)) (x_t-mu_t) + x1 - x0
vp          cos(pi t/2) x0 + sin(pi t/2) x1        sigma                       pi/2 (cos(pi t/2) x1 - sin(pi t/2) x0)
lipman      t x1 + (1-(1-sigma_min) t) x0          (x0 is the noise)           x1 - (1-sigma_min) x0
==========  =====================================  ==========================  =====================================

`linear` with sigma > 0 is I-CFM (Tong et al. 2024), with sigma = 0 rectified flow
(Liu et al. 2023); `sb` is the Brownian-bridge path of SB-CFM; `lipman` is the
optimal-transport path of Lipman et al. (2023) with a standard normal x0.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

__all__ = ["Path", "Linear", "BrownianBridge", "VariancePreserving", "Lipman", "make", "NAMES"]


def _expand(t, x):
  """Broadcasts `t` (scalar or `[B]`) against `x` `[B, *shape]`."""
  t = jnp.asarray(t, x.dtype)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


class Path:
  """Base class: subclasses define `mean`, `std` and `velocity`."""

  def mean(self, x0, x1, t):
    raise NotImplementedError

  def std(self, t):
    """sigma_t, same shape as `t`."""
    raise NotImplementedError

  def velocity(self, x0, x1, t, x_t):
    raise NotImplementedError

  def interpolate(self, x0, x1, t, eps):
    """Returns `(x_t, u_t)`, both `[B, *shape]`, for `t` `[B]` or scalar."""
    tb = _expand(t, x0)
    x_t = self.mean(x0, x1, tb) + self.std(tb) * eps
    return x_t, self.velocity(x0, x1, tb, x_t)


@dataclasses.dataclass(frozen=True)
class Linear(Path):
  """Straight-line path with constant noise level sigma (I-CFM; sigma = 0: rectified flow)."""
  sigma: float = 0.0

  def mean(self, x0, x1, t):
    return (1 - t) * x0 + t * x1

  def std(self, t):
    return jnp.full_like(t, self.sigma)

  def velocity(self, x0, x1, t, x_t):
    del t, x_t
    return x1 - x0


@dataclasses.dataclass(frozen=True)
class BrownianBridge(Path):
  """Brownian bridge with diffusion sigma: sigma_t = sigma sqrt(t(1-t)) (SB-CFM).

  At t = 0 and t = 1 the noise term vanishes (x_t = mu_t), and the velocity is
  the limit along the path, x1 - x0, so u_t is finite on the closed interval.
  """
  sigma: float = 1.0

  def mean(self, x0, x1, t):
    return (1 - t) * x0 + t * x1

  def std(self, t):
    return self.sigma * jnp.sqrt(t * (1 - t))

  def velocity(self, x0, x1, t, x_t):
    var = t * (1 - t)
    inner = var > 0
    coef = jnp.where(inner, (1 - 2 * t) / (2 * jnp.where(inner, var, 1.0)), 0.0)
    return coef * (x_t - self.mean(x0, x1, t)) + (x1 - x0)


@dataclasses.dataclass(frozen=True)
class VariancePreserving(Path):
  """Trigonometric (variance-preserving) interpolant with constant noise sigma."""
  sigma: float = 0.0

  def mean(self, x0, x1, t):
    a = 0.5 * math.pi * t
    return jnp.cos(a) * x0 + jnp.sin(a) * x1

  def std(self, t):
    return jnp.full_like(t, self.sigma)

  def velocity(self, x0, x1, t, x_t):
    del x_t
    a = 0.5 * math.pi * t
    return 0.5 * math.pi * (jnp.cos(a) * x1 - jnp.sin(a) * x0)


@dataclasses.dataclass(frozen=True)
class Lipman(Path):
  """Lipman et al. (2023) OT path: x0 ~ N(0, I) is the noise, eps is unused."""
  sigma_min: float = 1e-4

  def mean(self, x0, x1, t):
    return t * x1 + (1 - (1 - self.sigma_min) * t) * x0

  def std(self, t):
    return jnp.zeros_like(t)

  def velocity(self, x0, x1, t, x_t):
    del t, x_t
    return x1 - (1 - self.sigma_min) * x0

  def interpolate(self, x0, x1, t, eps):
    del eps
    tb = _expand(t, x0)
    return self.mean(x0, x1, tb), self.velocity(x0, x1, tb, None)


_REGISTRY = {"linear": (Linear, "sigma"), "sb": (BrownianBridge, "sigma"),
             "vp": (VariancePreserving, "sigma"), "lipman": (Lipman, "sigma_min")}
NAMES = tuple(_REGISTRY)


def make(name: str, **kwargs) -> Path:
  """`make("linear", sigma=0.1)`; also "sb" (sigma), "vp" (sigma), "lipman" (sigma_min)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown path {name!r}; valid paths: {', '.join(NAMES)}")
  cls, param = _REGISTRY[name]
  bad = set(kwargs) - {param}
  if bad:
    raise ValueError(f"path {name!r} got unknown argument(s) {sorted(bad)}; it takes only {param!r}")
  value = kwargs.get(param)
  if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
    raise ValueError(f"path {name!r}: {param} must be a finite number >= 0, got {value!r}")
  return cls(**{k: float(v) for k, v in kwargs.items() if v is not None})
