"""`integrate`: the single entry point that dispatches to the two drivers."""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from fm.solvers.adaptive import StepSizeController, integrate_adaptive
from fm.solvers.fixed import VectorField, integrate_fixed
from fm.solvers.tableau import TABLEAUX

__all__ = ["SOLVERS", "FIXED_STEP", "ADAPTIVE", "integrate", "check_tolerances"]

FIXED_STEP = ("euler", "midpoint", "heun", "rk4")
ADAPTIVE = ("dopri5",)
SOLVERS = FIXED_STEP + ADAPTIVE


def _concrete(x):
  """numpy value of x, or None if x is a tracer (inside jit)."""
  try:
    return np.asarray(x, dtype=np.float64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_tolerances(rtol, atol, max_steps=None) -> None:
  """ValueError (one sentence) unless rtol and atol are finite numbers > 0 and max_steps an int >= 1.

  With a zero or negative tolerance no step is ever accepted, so dopri5 spends
  `max_steps` steps and stops at t0; NaN compares false and does the same.
  Traced values (inside jit) are not checked.
  """
  for name, value in (("rtol", rtol), ("atol", atol)):
    v = _concrete(value)
    if v is not None and not (v.ndim == 0 and np.isfinite(v) and v > 0):
      raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1):
    raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")


def _check_save_at(save_at, t0, t1):
  s, a, b = _concrete(save_at), _concrete(t0), _concrete(t1)
  if s is None or a is None or b is None:
    return
  d = np.sign(b - a) if b != a else 1.0
  tol = 1e-6 * max(1.0, abs(b - a))
  if np.any(d * np.diff(s) < 0):
    raise ValueError("save_at must be ordered in the direction of integration")
  if np.any(d * (s - a) < -tol) or np.any(d * (b - s) < -tol):
    raise ValueError(f"save_at must lie within [t0, t1] = [{a}, {b}]")


def _grid_indices(save_at, t0, t1, steps: int) -> jax.Array:
  """int32 `[S]` grid indices of save times; ValueError if concretely off-grid."""
  s, a, b = _concrete(save_at), _concrete(t0), _concrete(t1)
  if s is not None and a is not None and b is not None and b != a:
    k = (s - a) / (b - a) * steps
    if np.any(np.abs(k - np.round(k)) > 1e-4):
      raise ValueError(
        f"save_at times must lie on the fixed-step grid t0 + k (t1 - t0) / {steps}"
      )
  k = (jnp.asarray(save_at) - t0) / (jnp.asarray(t1) - t0) * steps
  return jnp.clip(jnp.round(k), 0, steps).astype(jnp.int32)


def integrate(
  v: VectorField,
  x0: jax.Array,
  solver: str = "euler",
  *,
  t0=0.0,
  t1=1.0,
  steps: int | None = None,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  dt0=None,
  max_steps: int = 4096,
  save_at=None,
  save_trajectory: bool = False,
) -> tuple[jax.Array, dict]:
  """Solve `dx/dt = v(t, x)` from `t0` to `t1` and count every call of `v`.

  Jittable (wrap the call in `jax.jit`, passing params as jit arguments and
  closing over them in `v`); works under `jax.vmap`. Nothing is jitted
  internally, so a closure `v` over changing values is never stale.

  Args:
    v: vector field `v(t, x) -> [B, *shape]`; t is a scalar `[]` array in
    the dtype of x0, x is `[B, *shape]` (any trailing shape).
    x0: `[B, *shape]` floating initial state.
    solver: one of `SOLVERS`: "euler", "midpoint", "heun", "rk4" (fixed
    step, need `steps`) or "dopri5" (adaptive, `rtol`/`atol`).
    t0, t1: start/end times; `t1 < t0` integrates backwards.
    steps: number of uniform steps (fixed-step solvers only, static int).
    rtol, atol: tolerances (dopri5). The batch shares one step size: the
    error norm is the RMS over all elements of the batch.
    dt0: initial step magnitude for dopri5; None selects it with Hairer's
    algorithm (one extra call of `v`, counted in nfe).
    max_steps: dopri5 bound on attempted steps. When hit, integration stops
    early without raising and `info["success"]` is False.
    save_at: optional 1D `[S]` times in [t0, t1], ordered in the direction
    of integration; `info["trajectory"]` is then `[S, B, *shape]` (exact
    states, not interpolated). dopri5 clips steps to land on them;
    fixed-step solvers require them on the grid `t0 + k (t1 - t0)/steps`
    (checked when concrete, rounded to the nearest grid point under jit).
    save_trajectory: fixed-step only: `info["trajectory"]` holds every grid
    state `[steps + 1, B, *shape]` and `info["ts"]` the times `[steps + 1]`.

  Returns:
    `(x1, info)`: x1 `[B, *shape]` state at t1; info has int32 scalars
    `nfe` (exact calls of v, incl. rejected steps and step-size probes),
    `steps` (accepted), `rejected`, bool `success`, and optionally
    `trajectory` / `ts`.
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; valid choices: {', '.join(SOLVERS)}")
  x0 = jnp.asarray(x0)
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise ValueError(f"x0 must be floating point, got {x0.dtype}")
  if save_at is not None:
    if save_trajectory:
      raise ValueError("pass either save_at or save_trajectory, not both")
    if jnp.ndim(save_at) != 1:
      raise ValueError(f"save_at must be 1D, got shape {jnp.shape(save_at)}")
    _check_save_at(save_at, t0, t1)
  tableau = TABLEAUX[solver]
  empty_save = save_at is not None and jnp.shape(save_at)[0] == 0
  if empty_save:
    ts, save_at = jnp.asarray(save_at, x0.dtype), None

  if solver in FIXED_STEP:
    if steps is None:
      raise ValueError(f"solver {solver!r} is fixed-step: pass steps=<int>")
    if int(steps) != steps or steps < 1:
      raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    idx = None if save_at is None else _grid_indices(save_at, t0, t1, steps)
    x1, info = integrate_fixed(tableau, v, x0, t0, t1, steps, idx, save_trajectory)
  else:
    if steps is not None:
      raise ValueError(f"solver {solver!r} is adaptive: use rtol/atol, not steps")
    if save_trajectory:
      raise ValueError("save_trajectory is for fixed-step solvers; use save_at with dopri5")
    check_tolerances(rtol, atol, max_steps)
    controller = StepSizeController(rtol=rtol, atol=atol)
    x1, info = integrate_adaptive(tableau, v, x0, t0, t1, controller, dt0, max_steps, save_at)
  if save_at is not None:
    info["ts"] = jnp.asarray(save_at, x0.dtype)
  elif empty_save:
    info["ts"], info["trajectory"] = ts, jnp.zeros((0,) + x0.shape, x0.dtype)
  return x1, info
