"""One generic explicit Runge-Kutta driver for fixed-step solvers.

`rk_stages` evaluates the stages of any explicit tableau; `integrate_fixed`
runs it under `lax.scan` on a uniform grid. Every step calls the vector field
exactly `tableau.stages` times (no FSAL reuse), so `nfe == steps * stages`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from fm.solvers.tableau import ButcherTableau

__all__ = ["rk_stages", "combine", "integrate_fixed", "record"]

VectorField = Callable[[jax.Array, jax.Array], jax.Array]


def combine(coeffs, ks):
  """sum_i coeffs[i] * ks[i], skipping exact zeros; None if all are zero."""
  out = None
  for w, k in zip(coeffs, ks):
    if w == 0.0:
      continue
    term = k if w == 1.0 else w * k
    out = term if out is None else out + term
  return out


def rk_stages(
  tableau: ButcherTableau,
  v: VectorField,
  t: jax.Array,
  x: jax.Array,
  dt: jax.Array,
  k1: jax.Array | None = None,
) -> list[jax.Array]:
  """Stage derivatives of one explicit RK step.

  Args:
    tableau: explicit Butcher tableau.
    v: vector field `v(t, x)`, t scalar `[]`, x `[B, *shape]`.
    t: scalar `[]` start time of the step.
    x: `[B, *shape]` state at `t`.
    dt: scalar `[]` signed step.
    k1: optional precomputed `v(t, x)` (FSAL reuse); then only
    `stages - 1` evaluations are made.

  Returns:
    list of `stages` arrays `[B, *shape]`, `k_i = v(t + c_i dt, x_i)`.
  """
  ks: list[jax.Array] = []
  for i, (row, ci) in enumerate(zip(tableau.a, tableau.c)):
    if i == 0 and k1 is not None:
      ks.append(k1)
      continue
    incr = combine(row, ks)
    xi = x if incr is None else x + dt * incr
    ti = t if ci == 0.0 else t + ci * dt
    ks.append(jnp.asarray(v(ti, xi), dtype=x.dtype))
  return ks


def record(traj: jax.Array, j: jax.Array, x: jax.Array, reached) -> tuple[jax.Array, jax.Array]:
  """Write `x` into `traj[j], traj[j+1], ...` while `reached(j)` holds.

  Args:
    traj: `[S, B, *shape]` save buffer.
    j: int32 scalar, index of the next slot to fill.
    x: `[B, *shape]` state to store.
    reached: `reached(i) -> bool scalar`: save slot `i` is due now.

  Returns:
    `(j', traj')` with the due slots filled.
  """
  n = traj.shape[0]

  def cond(c):
    i, _ = c
    return (i < n) & reached(jnp.minimum(i, n - 1))

  def body(c):
    i, tr = c
    return i + 1, lax.dynamic_update_index_in_dim(tr, x, i, 0)

  return lax.while_loop(cond, body, (j, traj))


def integrate_fixed(
  tableau: ButcherTableau,
  v: VectorField,
  x0: jax.Array,
  t0,
  t1,
  steps: int,
  save_idx: jax.Array | None = None,
  save_trajectory: bool = False,
) -> tuple[jax.Array, dict]:
  """Integrate `x' = v(t, x)` from t0 to t1 with `steps` uniform steps.

  Args:
    tableau: explicit tableau.
    v: vector field.
    x0: `[B, *shape]` initial state (floating dtype; time uses the same).
    t0, t1: scalars; `t1 < t0` integrates backwards.
    steps: static number of steps (> 0).
    save_idx: optional int32 `[S]` non-decreasing grid indices in
    `[0, steps]`; the states there go to `info["trajectory"]` `[S, B, *shape]`.
    save_trajectory: if True, `info["trajectory"]` holds all grid states
    `[steps + 1, B, *shape]` and `info["ts"]` the grid `[steps + 1]`.

  Returns:
    `(x1, info)` with x1 `[B, *shape]`; info has int32 scalars `nfe`
    (`== steps * stages`), `steps`, `rejected` (0) and bool `success`.
  """
  dtype = x0.dtype
  t0 = jnp.asarray(t0, dtype)
  t1 = jnp.asarray(t1, dtype)
  dt = (t1 - t0) / steps

  if save_idx is not None:
    traj0 = jnp.zeros((save_idx.shape[0],) + x0.shape, dtype)
    j0, traj0 = record(traj0, jnp.int32(0), x0, lambda i: save_idx[i] <= 0)
  else:
    j0, traj0 = jnp.int32(0), None

  def body(carry, k):
    x, j, traj = carry
    t = t0 + k.astype(dtype) * dt
    ks = rk_stages(tableau, v, t, x, dt)
    x = x + dt * combine(tableau.b, ks)
    if save_idx is not None:
      j, traj = record(traj, j, x, lambda i: save_idx[i] <= k + 1)
    return (x, j, traj), (x if save_trajectory else None)

  (x1, _, traj), ys = lax.scan(body, (x0, j0, traj0), jnp.arange(steps, dtype=jnp.int32))
  info = {
    "nfe": jnp.int32(steps * tableau.stages),
    "steps": jnp.int32(steps),
    "rejected": jnp.int32(0),
    "success": jnp.bool_(True),
  }
  if save_trajectory:
    info["trajectory"] = jnp.concatenate([x0[None], ys], axis=0)
    info["ts"] = t0 + jnp.arange(steps + 1, dtype=dtype) * dt
  elif save_idx is not None:
    info["trajectory"] = traj
  return x1, info
