"""Metrics for generated samples and trajectories.

- `w2(x, y)`: exact 2-Wasserstein distance between two empirical measures
  (uniform weights), through fm's exact OT solver.
- `path_energy(trajectory, times)`: kinetic energy E[integral |dx/dt|^2 dt]
  of a discretised trajectory.
- `normalized_path_energy(pe, w2_sq)`: |PE - W2^2| / W2^2 (Tong et al. 2024),
  zero exactly for the OT (straight, constant-speed) map.
"""
from __future__ import annotations

import jax.numpy as jnp

from fm import couplings

__all__ = ["w2", "path_energy", "normalized_path_energy"]


def w2(x, y):
  """Exact W2 between point clouds `x` `[n, *shape]` and `y` `[m, *shape]`."""
  plan = couplings.plan(x, y, method="exact")
  cost = couplings.sqdist(x, y)
  return jnp.sqrt(jnp.maximum(jnp.sum(plan * cost), 0.0))


def path_energy(trajectory, times):
  """Mean over samples of sum_k |x_{k+1} - x_k|^2 / (t_{k+1} - t_k).

  Args:
    trajectory: `[T, B, *shape]` states at `times`.
    times: `[T]` increasing or decreasing times.
  Returns:
    scalar, the discretised integral of |v|^2 dt (exact for piecewise-linear paths).
  """
  dx = jnp.diff(trajectory, axis=0).reshape(trajectory.shape[0] - 1, trajectory.shape[1], -1)
  dt = jnp.abs(jnp.diff(jnp.asarray(times, trajectory.dtype)))
  return jnp.mean(jnp.sum(jnp.sum(jnp.square(dx), -1) / dt[:, None], 0))


def normalized_path_energy(pe, w2_sq):
  """|PE - W2^2| / W2^2."""
  return jnp.abs(pe - w2_sq) / w2_sq
