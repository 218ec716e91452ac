"""Adaptive step size: a small controller object plus one embedded-RK driver.

The driver runs under `lax.while_loop`, so it is jittable and never raises:
if `max_steps` (accepted + rejected) is exhausted before reaching `t1`,
integration stops and `info["success"]` is False.

The whole batch `[B, *shape]` shares ONE step size: the error norm is the RMS
over every element of the batch (as in torchdiffeq / TorchCFM). Use `jax.vmap`
over `integrate` to give each sample its own step size.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fm.solvers.fixed import VectorField, combine, record, rk_stages
from fm.solvers.tableau import ButcherTableau

__all__ = ["StepSizeController", "initial_step", "integrate_adaptive"]


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


@dataclasses.dataclass(frozen=True)
class StepSizeController:
  """Standard integral (I) controller with a mixed absolute/relative tolerance.

  A step with local error estimate `e` `[B, *shape]` is accepted iff
  `||e / (atol + rtol * max(|x|, |x_new|))||_RMS <= 1` (RMS over all batch
  elements). The next step is `h * clip(safety * norm**(-exponent),
  factor_min, factor_max)`, with `exponent = 1 / (q + 1)`, q the order of
  the embedded (lower-order) solution, i.e. 1/5 for dopri5.
  """

  rtol: float = 1e-5
  atol: float = 1e-5
  safety: float = 0.9
  factor_min: float = 0.2
  factor_max: float = 10.0

  def error_norm(self, err: jax.Array, x: jax.Array, x_new: jax.Array) -> jax.Array:
    """Scaled RMS norm `[]` of the error `err` `[B, *shape]`; non-finite -> inf."""
    scale = self.atol + self.rtol * jnp.maximum(jnp.abs(x), jnp.abs(x_new))
    n = _rms(err / scale)
    return jnp.where(jnp.isfinite(n), n, jnp.inf)

  def next_step(self, h: jax.Array, norm: jax.Array, exponent: float) -> jax.Array:
    """Proposed next step magnitude `[]` after a step of magnitude `h`."""
    factor = self.safety * norm ** (-exponent)  # norm == 0 -> inf -> factor_max
    return h * jnp.clip(factor, self.factor_min, self.factor_max)


def initial_step(
  v: VectorField,
  t0: jax.Array,
  x0: jax.Array,
  f0: jax.Array,
  direction: jax.Array,
  span: jax.Array,
  order: int,
  controller: StepSizeController,
) -> jax.Array:
  """Hairer-Norsett-Wanner initial step size (Solving ODEs I, II.4).

  Makes exactly ONE extra call of `v` (f0 = v(t0, x0) is given).
  Returns the step magnitude `[]`, at most `span = |t1 - t0|`.
  """
  scale = controller.atol + controller.rtol * jnp.abs(x0)
  d0 = _rms(x0 / scale)
  d1 = _rms(f0 / scale)
  small = (d0 < 1e-5) | (d1 < 1e-5)
  h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
  h0 = jnp.minimum(h0, span).astype(x0.dtype)
  f1 = jnp.asarray(v(t0 + direction * h0, x0 + (direction * h0) * f0), x0.dtype)
  d2 = _rms((f1 - f0) / scale) / jnp.where(h0 > 0, h0, 1.0)
  dmax = jnp.maximum(d1, d2)
  tiny = dmax <= 1e-15
  h1 = jnp.where(
    tiny,
    jnp.maximum(1e-6, h0 * 1e-3),
    (0.01 / jnp.where(tiny, 1.0, dmax)) ** (1.0 / order),
  )
  return jnp.minimum(jnp.minimum(100.0 * h0, h1), span).astype(x0.dtype)


def integrate_adaptive(
  tableau: ButcherTableau,
  v: VectorField,
  x0: jax.Array,
  t0,
  t1,
  controller: StepSizeController,
  dt0=None,
  max_steps: int = 4096,
  save_at: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Integrate `x' = v(t, x)` with an embedded FSAL pair (e.g. dopri5).

  Args:
    tableau: embedded tableau with `b_err` and `fsal=True`.
    v: vector field `v(t, x)`, t scalar `[]`, x `[B, *shape]`.
    x0: `[B, *shape]` initial state (floating; time uses the same dtype).
    t0, t1: scalars; `t1 < t0` integrates backwards.
    controller: step-size controller.
    dt0: initial step magnitude; None -> Hairer's algorithm (one extra call).
    max_steps: bound on attempted (accepted + rejected) steps.
    save_at: optional `[S]` times in [t0, t1], ordered in the direction of
    integration. Steps are clipped to land exactly on them (no
    interpolation), and the states go to `info["trajectory"]`
    `[S, B, *shape]`.

  Returns:
    `(x1, info)`; info holds int32 scalars `nfe` (every call of `v`:
    1 initial + 1 if dt0 is None + (stages - 1) per attempted step),
    `steps` (accepted), `rejected`, and bool `success` (reached t1).
  """
  if tableau.b_err is None or not tableau.fsal:
    raise ValueError(f"{tableau.name!r} is not an embedded FSAL pair")
  dtype = x0.dtype
  t0 = jnp.asarray(t0, dtype)
  t1 = jnp.asarray(t1, dtype)
  direction = jnp.where(t1 >= t0, 1.0, -1.0).astype(dtype)
  span = jnp.abs(t1 - t0)
  exponent = 1.0 / tableau.order  # 1 / (embedded order + 1)
  err_w = tableau.error_weights

  f0 = jnp.asarray(v(t0, x0), dtype)
  nfe = jnp.int32(1)
  if dt0 is None:
    h = initial_step(v, t0, x0, f0, direction, span, tableau.order, controller)
    nfe = nfe + 1
  else:
    h = jnp.minimum(jnp.abs(jnp.asarray(dt0, dtype)), span)

  if save_at is not None:
    save_at = jnp.asarray(save_at, dtype)
    n_save = save_at.shape[0]
    traj = jnp.zeros((n_save,) + x0.shape, dtype)
    j, traj = record(traj, jnp.int32(0), x0, lambda i: direction * (save_at[i] - t0) <= 0)
  else:
    n_save, traj, j = 0, None, jnp.int32(0)

  def cond(c):
    t, _, _, _, _, _, n_acc, n_rej, _ = c
    return (direction * (t1 - t) > 0) & (n_acc + n_rej < max_steps)

  def body(c):
    t, x, f, h, j, traj, n_acc, n_rej, nfe = c
    if n_save:
      nxt = save_at[jnp.minimum(j, n_save - 1)]
      target = jnp.where((j < n_save) & (direction * (t1 - nxt) > 0), nxt, t1)
    else:
      target = t1
    remaining = direction * (target - t)
    clip = h >= remaining
    h_use = jnp.where(clip, remaining, h)
    dt = direction * h_use
    ks = rk_stages(tableau, v, t, x, dt, k1=f)
    x_new = x + dt * combine(tableau.b, ks)
    norm = controller.error_norm(dt * combine(err_w, ks), x, x_new)
    accept = norm <= 1.0
    h_next = controller.next_step(h_use, norm, exponent)
    # A step shortened to hit a save time / t1 says little about the scale.
    h_next = jnp.where(clip & accept, jnp.maximum(h_next, h), h_next)
    t_new = jnp.where(clip, target, t + dt)
    t = jnp.where(accept, t_new, t)
    x = jnp.where(accept, x_new, x)
    f = jnp.where(accept, ks[-1], f)
    if n_save:
      j, traj = record(traj, j, x, lambda i: direction * (save_at[i] - t) <= 0)
    n_acc = n_acc + accept.astype(jnp.int32)
    n_rej = n_rej + (~accept).astype(jnp.int32)
    return t, x, f, h_next, j, traj, n_acc, n_rej, nfe + (tableau.stages - 1)

  init = (t0, x0, f0, h, j, traj, jnp.int32(0), jnp.int32(0), nfe)
  t, x, _, _, _, traj, n_acc, n_rej, nfe = jax.lax.while_loop(cond, body, init)
  info = {"nfe": nfe, "steps": n_acc, "rejected": n_rej, "success": t == t1}
  if n_save:
    info["trajectory"] = traj
  return x, info
