"""SF2M (Tong et al. 2024, simulation-free Schrodinger bridges): score and flow matching on the SB path.

On the Brownian-bridge path x_t = (1-t) x0 + t x1 + sigma_t eps, sigma_t = sigma sqrt(t(1-t)),
with entropic-OT pairs (epsilon = 2 sigma^2), one network with 2x output channels returns
the flow v_theta and the score head s_theta from the same forward (so an SDE step costs
one NFE). The loss is TorchCFM's (its SF2M tutorial):

    flow  = mean((v_theta - u_t)^2)
    score = mean((lambda_t s_theta + eps)^2),   lambda_t = 2 sigma_t / sigma^2
    loss  = flow + score

At the optimum s_theta = sigma^2 / 2 * grad log p_t (since E[eps | x_t] = -sigma_t grad log p_t),
which is exactly the term TorchCFM adds to the drift: dx = (v + s_theta) dt + sigma dW
(`fm.stochastic.sf2m_sde`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from fm import paths as paths_lib

__all__ = ["SF2MLoss", "split_flow_score", "score_weight", "sf2m_terms"]


def split_flow_score(out: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`[B, ..., 2C]` network output -> (v `[B, ..., C]`, s_theta `[B, ..., C]`)."""
  if out.shape[-1] % 2:
    raise ValueError(f"an SF2M network returns flow and score stacked on the last axis (2C channels), "
                     f"got {out.shape[-1]} channels; build the model with outputs=2")
  return jnp.split(out, 2, axis=-1)


def score_weight(path: paths_lib.BrownianBridge, t: jax.Array) -> jax.Array:
  """lambda_t = 2 sigma_t / sigma^2, same shape as t (TorchCFM's `compute_lambda`)."""
  return 2 * path.std(t) / path.sigma**2


def sf2m_terms(path: paths_lib.BrownianBridge, x0, x1, t, eps, out):
  """`(flow_loss, score_loss)` for given pairs `[B, *shape]`, times `[B]`, noise and network output `[B, ..., 2C]`."""
  x_t, u_t = path.interpolate(x0, x1, t, eps)
  del x_t
  v, s = split_flow_score(out)
  lam = score_weight(path, t).reshape(t.shape + (1,) * (x0.ndim - 1))
  return jnp.mean(jnp.square(v - u_t)), jnp.mean(jnp.square(lam * s + eps))


@dataclasses.dataclass(frozen=True)
class SF2MLoss:
  """The SF2M loss on (already coupled) pairs.

  Attributes:
    path: a `BrownianBridge` with sigma > 0.
    time_sampler: `time_sampler(key, n, dtype) -> [n]` (TorchCFM: uniform).
  """
  path: paths_lib.BrownianBridge
  time_sampler: Callable

  def __post_init__(self):
    if not isinstance(self.path, paths_lib.BrownianBridge) or not self.path.sigma > 0:
      raise ValueError(f"sf2m needs the Brownian-bridge path 'sb' with sigma > 0, got {self.path!r}")

  def __call__(self, apply_fn, params, key, x0, x1):
    """`apply_fn(params, t, x) -> [B, ..., 2C]`; returns `(loss, aux)` with `flow_loss`, `score_loss`."""
    k_t, k_eps = jax.random.split(key)
    t = self.time_sampler(k_t, x0.shape[0], x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t, _ = self.path.interpolate(x0, x1, t, eps)
    flow, score = sf2m_terms(self.path, x0, x1, t, eps, apply_fn(params, t, x_t))
    loss = flow + score
    return loss, {"loss": loss, "flow_loss": flow, "score_loss": score}
