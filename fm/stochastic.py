"""Stochastic samplers: the drift and diffusion of an SDE with the same marginals as a trained flow.

For marginals p_t with probability-flow velocity v and any diffusion g(t), the SDE

    dx = [v(t, x) + g(t)^2 / 2 * grad log p_t(x)] dt + g(t) dW

has the same marginals p_t (Fokker-Planck: the added drift and the diffusion cancel).
Two ways to get the score:

* `sf2m`: a learned score head. fm follows TorchCFM's SF2M: the head s_theta is trained
  with the loss |lambda_t s_theta + eps|^2, lambda_t = 2 sigma_t / sigma^2, so at the optimum
  s_theta = sigma^2 / 2 * grad log p_t. With `g = noise * sigma`:
  drift = v + noise^2 * s_theta (noise = 1 is TorchCFM's SDE `v + s_theta`, g = sigma).
* `flow`: any flow trained on a Gaussian path x_t = alpha_t x1 + beta_t x0 + sigma_t eps
  with x0 ~ N(0, I) drawn independently of x1 (icfm, rf, fm, vp). Write n = beta_t x0 +
  sigma_t eps ~ N(0, s_t^2 I), s_t^2 = beta_t^2 + sigma_t^2. Tweedie gives
  grad log p_t(x) = -m / s_t^2 with m = E[n | x_t = x], and the velocity
  v = E[alpha' x1 + beta' x0 + sigma' eps | x] = (alpha'/alpha)(x - m) + k m with
  k = (beta beta' + sigma sigma') / s^2, so m = s^2 (alpha' x - alpha v) / (alpha' s^2 - alpha
  (beta beta' + sigma sigma')). With `g = noise * s_t` (rectified flow's `sigma_var` choice:
  s_t = 1 - t on its path, so the noise vanishes at the data end) the drift is
  v - noise^2 / 2 * m: no division by s_t^2, finite on [0, 1].
  For rf (alpha = t, beta = 1 - t): m = (1 - t)(x - t v), grad log p_t = (t v - x) / (1 - t).

NFE: the drift costs one network forward (for sf2m the flow and score come out of
the same forward), so NFE = calls of the drift (`fm.solvers.sde`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from fm import paths as paths_lib

__all__ = ["SDE", "flow_noise_mean", "flow_sde", "sf2m_sde", "gaussian_path_coefficients"]

Field = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SDE:
  """`dx = drift(t, x) dt + diffusion(t) dW`; drift `[B, *shape]`, diffusion a scalar."""
  drift: Field
  diffusion: Callable[[jax.Array], jax.Array]


def gaussian_path_coefficients(path: paths_lib.Path, t: jax.Array):
  """`(alpha, beta, sigma)` and their time derivatives at scalar t: x_t = alpha x1 + beta x0 + sigma eps.

  Read off the path's `mean` and `std` (derivatives by `jax.jvp`), so it holds for any affine path.
  """
  def coeffs(t):
    one, zero = jnp.ones((), t.dtype), jnp.zeros((), t.dtype)
    return path.mean(zero, one, t), path.mean(one, zero, t), path.std(t)
  t = jnp.asarray(t)
  values, rates = jax.jvp(coeffs, (t,), (jnp.ones_like(t),))
  return values, rates


def flow_noise_mean(path: paths_lib.Path, t: jax.Array, x: jax.Array, v: jax.Array):
  """`(m, s2)`: m = E[beta_t x0 + sigma_t eps | x_t = x] `[B, *shape]` from the velocity v, s2 = s_t^2.

  Exact for x0 ~ N(0, I) independent of x1; m = 0 where s_t = 0 (no noise left).
  """
  (a, b, s), (da, db, ds) = gaussian_path_coefficients(path, jnp.asarray(t, x.dtype))
  s2 = b * b + s * s
  den = da * s2 - a * (b * db + s * ds)
  safe = jnp.where(s2 > 0, den, 1.0)
  m = jnp.where(s2 > 0, s2 * (da * x - a * v) / safe, 0.0)
  return m, s2


def flow_sde(v: Field, path: paths_lib.Path, noise: float) -> SDE:
  """The marginal-preserving SDE of a flow v on a Gaussian path (see the module docstring).

  g(t) = noise * s_t; drift = v - noise^2 / 2 * E[n | x]. noise = 0 is the probability-flow ODE.
  """
  def drift(t, x):
    vt = v(t, x)
    m, _ = flow_noise_mean(path, t, x, vt)
    return vt - 0.5 * noise ** 2 * m

  def diffusion(t):
    (_, b, s), _ = gaussian_path_coefficients(path, jnp.asarray(t))
    return noise * jnp.sqrt(b * b + s * s)
  return SDE(drift, diffusion)


def sf2m_sde(flow_and_score: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
             sigma: float, noise: float = 1.0) -> SDE:
  """SF2M's SDE: g = noise * sigma, drift = v + noise^2 * s_theta (s_theta = sigma^2/2 grad log p).

  `flow_and_score(t, x) -> (v, s_theta)`, both `[B, *shape]`, from one network forward.
  """
  def drift(t, x):
    vt, st = flow_and_score(t, x)
    return vt + noise ** 2 * st
  return SDE(drift, lambda t: jnp.asarray(noise * sigma, jnp.result_type(t)))
