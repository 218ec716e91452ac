"""The MeanFlow sampler: k steps of z_{n+1} = z_n + (t_{n+1} - t_n) u(z_n, t_n, t_{n+1} - t_n).

`u(t, z, h)` is an average-velocity network over the interval [t, t + h] (`fm.meanflow`);
one step (k = 1) is z_1 = z_0 + u(z_0, 0, 1). One call of u is one NFE, so nfe = steps.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["integrate_average"]


def integrate_average(u: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], x0: jax.Array, *,
                      steps: int = 1, t0=0.0, t1=1.0, save_trajectory: bool = False) -> tuple[jax.Array, dict]:
  """Jump from t0 to t1 in `steps` uniform average-velocity steps.

  Args:
    u: `u(t, x, h) -> [B, *shape]` with t and h scalars `[]`, x `[B, *shape]`.
    x0: `[B, *shape]` floating state at t0.
    steps: number of jumps (static int >= 1).
    save_trajectory: also return `info["trajectory"]` `[steps + 1, B, *shape]` and `info["ts"]`.

  Returns:
    `(x1, info)` with int32 `nfe == steps` and `steps`.
  """
  if isinstance(steps, bool) or int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  steps = int(steps)
  x0 = jnp.asarray(x0)
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f"x0 must be floating point, got {x0.dtype}")
  dtype = x0.dtype
  t0 = jnp.asarray(t0, dtype)
  h = (jnp.asarray(t1, dtype) - t0) / steps

  def step(x, n):
    t = t0 + n.astype(dtype) * h
    x = x + h * jnp.asarray(u(t, x, h), dtype)
    return x, (x if save_trajectory else None)

  x1, traj = lax.scan(step, x0, jnp.arange(steps, dtype=jnp.int32))
  info = {"nfe": jnp.asarray(steps, jnp.int32), "steps": jnp.asarray(steps, jnp.int32)}
  if save_trajectory:
    info["trajectory"] = jnp.concatenate([x0[None], traj], axis=0)
    info["ts"] = t0 + jnp.arange(steps + 1, dtype=dtype) * h
  return x1, info
