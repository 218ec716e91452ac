"""Exact minibatch optimal transport (squared Euclidean cost)."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from fm.couplings import base, host
from fm.couplings.auction import auction
from fm.couplings.host_auction import host_auction
from fm.couplings.reduced_lap import reduced_assignment

__all__ = ["SOLVERS", "MAX_LCM", "assignment", "assignment_info", "assignment_points", "exact_plan", "Exact"]

SOLVERS = ("auto", "host_auction", "reduced", "scipy", "auction", "hungarian")
MAX_LCM = 4096


def _scipy_host(cost: np.ndarray) -> np.ndarray:
  _, col = scipy.optimize.linear_sum_assignment(np.asarray(cost, np.float64))
  return col.astype(np.int32)


def _reduced_host(cost: np.ndarray) -> np.ndarray:
  return reduced_assignment(np.asarray(cost, np.float64)).astype(np.int32)


_HOST = {"host_auction": host_auction, "scipy": _scipy_host, "reduced": _reduced_host}


def _points_solver(solve):
  def from_points(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    return solve(base.sqdist_host(x0, x1))
  from_points.__name__ = f"{solve.__name__}_from_points"
  return from_points


# Host solvers fed with points: the [n, n] cost exists once, on the host.
_HOST_POINTS = {name: _points_solver(fn) for name, fn in _HOST.items()}


def _resolve(solver: str) -> str:
  if solver not in SOLVERS:
    raise ValueError(f"unknown exact solver {solver!r}; valid: {SOLVERS}")
  if solver != "auto":
    return solver
  # Measured on a 2-core CPU (experiments/benchmarks/OT_RESULTS.md): the
  # compiled host auction beats POT's network simplex, scipy's LAP on a
  # dual-reduced cost ("reduced"), plain scipy and the JAX auction on CPU; on
  # accelerators the pure-JAX auction keeps everything on device.
  return "host_auction" if jax.default_backend() == "cpu" else "auction"


def assignment_info(cost: jax.Array, solver: str = "auto",
                    max_rounds: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`(perm, converged)`: `assignment`'s permutation and whether the solver finished.

  `converged` (bool `[]`) is False only for the JAX auction when it hit its
  round limit `max_rounds` (default: `auction`'s); its permutation is then
  completed greedily, not optimal. The other solvers always finish.
  """
  n, m = cost.shape
  if n != m:
    raise ValueError(f"assignment needs a square cost matrix, got {cost.shape}")
  solver = _resolve(solver)
  if solver in _HOST:
    out = jax.ShapeDtypeStruct((n,), jnp.int32)
    return host.host_call(_HOST[solver], out, cost), jnp.asarray(True)
  if solver == "auction":
    return auction(cost) if max_rounds is None else auction(cost, max_rounds=max_rounds)
  rows, cols = optax.assignment.hungarian_algorithm(cost)
  return jnp.zeros((n,), jnp.int32).at[rows].set(cols.astype(jnp.int32)), jnp.asarray(True)


def assignment(cost: jax.Array, solver: str = "auto") -> jax.Array:
  """Optimal permutation for a square cost matrix.

  Args:
    cost: `[n, n]` cost matrix.
    solver: one of `SOLVERS`. "host_auction": epsilon-scaling auction
      compiled by numba, on the host via `fm.couplings.host.host_call` (float64; cost
      within 1e-9 of the cost range of the optimum, see
      `fm.couplings.host_auction`); "scipy": host `linear_sum_assignment` via
      `host_call` (float64, exact); "reduced": the same host solver
      on `cost - u[:, None] - v[None, :]` for estimated dual potentials
      `(u, v)` (same optimal permutations for any `(u, v)`, so equally
      exact; 2-4x faster, see `fm.couplings.reduced_lap`); "auction": pure-JAX
      epsilon-scaling auction (on device, exact to the float resolution of
      `cost`); "hungarian": `optax.assignment.hungarian_algorithm` (on
      device, slow for n > 256); "auto": fastest per backend.

  Returns:
    `perm` `[n]` int32 minimising `sum_i cost[i, perm[i]]`.
  """
  return assignment_info(cost, solver)[0]


def assignment_points(x0: jax.Array, x1: jax.Array, solver: str = "auto") -> jax.Array:
  """Optimal permutation pairing `x0[i]` with `x1[perm[i]]` (squared Euclidean cost).

  Host solvers receive the points `[n, d]` and build the float32 cost on the
  host in row blocks, so the only `[n, n]` array is that one host matrix (1 GiB
  at n = 16384) and only `2 [n, d]` leave the device; device solvers use
  `sqdist` then `assignment`.

  Args:
    x0, x1: `[n, *shape]` with the same n.
    solver: as in `assignment`.

  Returns:
    `perm` `[n]` int32.
  """
  n = x0.shape[0]
  if x1.shape[0] != n:
    raise ValueError(f"assignment_points needs equal batch sizes, got {x0.shape[0]} and {x1.shape[0]}")
  solver = _resolve(solver)
  if solver in _HOST_POINTS:
    a = jnp.reshape(x0, (n, -1)).astype(jnp.float32)
    b = jnp.reshape(x1, (n, -1)).astype(jnp.float32)
    return host.host_call(_HOST_POINTS[solver], jax.ShapeDtypeStruct((n,), jnp.int32), a, b)
  return assignment(base.sqdist(x0, x1), solver)


def exact_plan(x0: jax.Array, x1: jax.Array, solver: str = "auto") -> jax.Array:
  """Exact OT plan `[n, m]` for uniform marginals, summing to 1.

  For `n != m` mass is split by replicating rows `L/n` and columns `L/m`
  times, `L = lcm(n, m)`, and solving an `[L, L]` assignment. This is exact:
  scaled by L the marginals are integers, so the transport LP has an
  integral optimal vertex, i.e. an optimal plan with entries in `(1/L) Z`.
  Raises ValueError if `L > MAX_LCM`.
  """
  return _plan_info(base.sqdist(x0, x1), solver)[0]


def _plan_info(cost: jax.Array, solver: str, max_rounds: int | None = None) -> tuple[jax.Array, jax.Array]:
  """`exact_plan` from the cost `[n, m]`, with the solver's `converged` flag."""
  n, m = cost.shape
  lcm = n * m // math.gcd(n, m)
  if lcm > MAX_LCM:
    raise ValueError(
        f"exact plan with n={n}, m={m} needs an assignment of size "
        f"lcm={lcm} > MAX_LCM={MAX_LCM}; use equal batch sizes or sinkhorn")
  rn, rm = lcm // n, lcm // m
  big = jnp.repeat(jnp.repeat(cost, rn, axis=0), rm, axis=1)
  perm, converged = assignment_info(big, solver, max_rounds)
  rows = jnp.arange(lcm) // rn
  dt = jnp.result_type(cost.dtype, jnp.float32)
  return jnp.zeros((n, m), dt).at[rows, perm // rm].add(1.0 / lcm), converged


@dataclasses.dataclass(frozen=True)
class Exact(base.Coupling):
  """Exact minibatch OT coupling.

  Equal batch sizes: x0 kept in order (`i0 = arange(n)`), `i1 = perm` the
  optimal permutation (no duplicates). Unequal sizes: for each x0[i] a partner is
  drawn from the row of the exact plan.

  Attributes:
    solver: see `assignment`.
    max_rounds: round limit of the JAX auction (None: `auction`'s default).
      A batch that hits it is reported as `info["converged"] = False`.
  """

  solver: str = "auto"
  max_rounds: int | None = None

  def __post_init__(self):
    _resolve(self.solver)
    if self.max_rounds is not None and (isinstance(self.max_rounds, bool) or self.max_rounds < 1
                                        or int(self.max_rounds) != self.max_rounds):
      raise ValueError(f"max_rounds={self.max_rounds!r} must be an integer >= 1 or None")

  def plan(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    return exact_plan(x0, x1, self.solver)

  def pairs(self, key: jax.Array, x0: jax.Array, x1: jax.Array, allowed: jax.Array | None = None):
    """`(i0, i1, info)`: `i0 = arange(n)`, `i1` `[n]` the optimal partners (a permutation when n = m).

    `allowed` `[n, n]` (n = m only): the optimum among the permutations that use
    only allowed pairs, when one exists (e.g. square blocks); the other entries
    get a cost above `n x (max - min)` of the cost, more than any reassignment
    can save. `info["converged"]` is False if the JAX auction hit its limit.
    """
    n, m = x0.shape[0], x1.shape[0]
    if allowed is not None:
      if n != m:
        raise ValueError(f"exact OT with a pair mask needs equal batch sizes, got {n} and {m}")
      cost = base.sqdist(x0, x1)
      lo, hi = jnp.min(cost), jnp.max(cost)
      perm, converged = assignment_info(base.forbid(cost, allowed, hi + n * (hi - lo) + 1.0), self.solver,
                                        self.max_rounds)
    elif n == m and _resolve(self.solver) in _HOST_POINTS:
      perm, converged = assignment_points(x0, x1, self.solver), jnp.asarray(True)
    elif n == m:
      perm, converged = assignment_info(base.sqdist(x0, x1), self.solver, self.max_rounds)
    else:
      p, converged = _plan_info(base.sqdist(x0, x1), self.solver, self.max_rounds)
      perm = base.sample_rows(key, jnp.log(p))
    i0 = jnp.arange(n, dtype=jnp.int32)
    return i0, perm, base._info(x0, x1, i0, perm, converged=converged)
