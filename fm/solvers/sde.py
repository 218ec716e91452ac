"""Fixed-step SDE solvers for `dx = f(t, x) dt + g(t) dW` with additive (state-independent) noise.

Two schemes on a uniform grid `t_n = t0 + n h`, run under `lax.scan`:

* `euler_maruyama`: `x += f(t, x) h + g(t) sqrt(h) xi`; weak order 1; NFE = steps.
* `stochastic_heun`: predictor `x~ = x + f(t, x) h + g(t) dW`, corrector
  `x += (f(t, x) + f(t + h, x~)) h / 2 + (g(t) + g(t + h)) dW / 2` with the same
  `dW`; weak order 2 for additive noise (the order fit in the tests measures it);
  NFE = 2 steps.

One NFE is one call of the drift `f`. A drift built from a flow and a score that
one network forward returns together (`fm.sde.sf2m_drift`, 2x output channels)
is one pass, hence one NFE. `g(t)` is never a network call.

The noise of step n is `normal(fold_in(key, n), x.shape)` for the whole batch, so
a seed and a batch give the same samples whatever the number of devices the
batch is sharded over (the draw does not depend on the sharding). With one key
per sample (`key` `[B, 2]`, or typed keys `[B]`), sample i's noise at step n is
`normal(fold_in(key[i], n), shape)`: then the samples do not depend on the batch
size either (`fm.evaluate.sampling` draws this way).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["SDE_SOLVERS", "STAGES", "integrate_sde"]

STAGES = {"euler_maruyama": 1, "stochastic_heun": 2}
SDE_SOLVERS = tuple(STAGES)

Drift = Callable[[jax.Array, jax.Array], jax.Array]
Diffusion = Callable[[jax.Array], jax.Array]


def integrate_sde(drift: Drift, diffusion: Diffusion | float, x0: jax.Array, key: jax.Array,
                  solver: str = "euler_maruyama", *, steps: int, t0=0.0, t1=1.0,
                  save_trajectory: bool = False) -> tuple[jax.Array, dict]:
  """Solve `dx = drift(t, x) dt + diffusion(t) dW` from t0 to t1 (t1 > t0).

  Jittable; nothing is jitted inside.

  Args:
    drift: `drift(t, x) -> [B, *shape]`, t a scalar `[]`, x `[B, *shape]`.
    diffusion: `g(t) -> []` scalar array, or a float for a constant g.
    x0: `[B, *shape]` floating initial state.
    key: PRNG key; step n draws `normal(fold_in(key, n), x0.shape)`. Or one key per
      sample (`[B, 2]` raw or `[B]` typed): sample i draws `normal(fold_in(key[i], n), shape)`.
    solver: one of `SDE_SOLVERS`.
    steps: number of uniform steps (static int >= 1).
    t0, t1: start and end times, t1 > t0.
    save_trajectory: also return every grid state `info["trajectory"]`
      `[steps + 1, B, *shape]` and `info["ts"]` `[steps + 1]`.

  Returns:
    `(x1, info)`: x1 `[B, *shape]`; info has int32 `nfe` (exact calls of drift,
    `steps * STAGES[solver]`), `steps`, and `trajectory`/`ts` when asked.
  """
  if solver not in STAGES:
    raise ValueError(f"unknown SDE solver {solver!r}; valid choices: {', '.join(SDE_SOLVERS)}")
  if isinstance(steps, bool) or int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  steps = int(steps)
  try:
    forward = float(t1) > float(t0)
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    forward = True   # traced times are not checked
  if not forward:
    raise ValueError(f"SDE solvers integrate forward in time: need t1 > t0, got t0={t0!r}, t1={t1!r}")
  x0 = jnp.asarray(x0)
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f"x0 must be floating point, got {x0.dtype}")
  dtype = x0.dtype
  g = diffusion if callable(diffusion) else (lambda t, c=diffusion: jnp.asarray(c, dtype))
  t0 = jnp.asarray(t0, dtype)
  h = (jnp.asarray(t1, dtype) - t0) / steps
  sqrt_h = jnp.sqrt(h)

  def f(t, x):
    return jnp.asarray(drift(t, x), dtype)

  key = jnp.asarray(key) if not _typed(key) else key
  per_sample = key.ndim == (1 if _typed(key) else 2)
  if per_sample and key.shape[0] != x0.shape[0]:
    raise ValueError(f"per-sample keys must number the batch {x0.shape[0]}, got {key.shape[0]}")

  def normal(n):
    if per_sample:
      return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, n), x0.shape[1:], dtype))(key)
    return jax.random.normal(jax.random.fold_in(key, n), x0.shape, dtype)

  def step(x, n):
    t = t0 + n.astype(dtype) * h
    dw = sqrt_h * normal(n)
    k1 = f(t, x)
    g0 = jnp.asarray(g(t), dtype)
    x_em = x + h * k1 + g0 * dw
    if solver == "euler_maruyama":
      x_new = x_em
    else:
      k2 = f(t + h, x_em)
      x_new = x + 0.5 * h * (k1 + k2) + 0.5 * (g0 + jnp.asarray(g(t + h), dtype)) * dw
    return x_new, (x_new if save_trajectory else None)

  x1, traj = lax.scan(step, x0, jnp.arange(steps, dtype=jnp.int32))
  info = {"nfe": jnp.asarray(steps * STAGES[solver], jnp.int32), "steps": jnp.asarray(steps, jnp.int32)}
  if save_trajectory:
    info["trajectory"] = jnp.concatenate([x0[None], traj], axis=0)
    info["ts"] = t0 + jnp.arange(steps + 1, dtype=dtype) * h
  return x1, info


def _typed(key) -> bool:
  return jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key) if hasattr(key, "dtype") else False
