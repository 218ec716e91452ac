"""Entropic partial OT coupling: POT's `entropic_partial_wasserstein`, TorchCFM's "partial", in JAX.

The plan solves, for uniform `a = 1/n`, `b = 1/m` and the unnormalised
squared-Euclidean cost `M` `[n, m]`,

    min_P  <P, M> + epsilon sum_ij P_ij log P_ij
    s.t.   P >= 0,  P 1 <= a,  P^T 1 <= b,  sum_ij P_ij = mass,

POT's `ot.partial.entropic_partial_wasserstein(a, b, M, reg, m)` (Benamou et
al. 2015, prop. 5). Names: `epsilon` = POT's `reg`, `mass` = POT's `m` in
(0, 1]. TorchCFM's `OTPlanSampler("partial", reg)` passes no `m`, i.e.
`mass = 1`, where the constraints are tight and the plan is the balanced
Sinkhorn plan.

POT runs Dykstra's iterated KL projections; here the same minimiser is reached
by exact block-coordinate ascent on the dual, in the log domain: with
`log P_ij = -M_ij / epsilon - p_i - q_j + l`, `p, q >= 0`,

    p_i = max(0, logsumexp_j(-M_ij / eps - q_j + l) - log a_i)     (rows <= a)
    q_j = max(0, logsumexp_i(-M_ij / eps - p_i + l) - log b_j)     (columns <= b)
    l   = log mass - logsumexp_ij(-M_ij / eps - p_i - q_j)         (total = mass)

until the largest change of `(p, q, l)` in one sweep is below `threshold`.
At `mass = 1` the constraints are equalities, `p` and `q` are not clamped and
the sweep is balanced Sinkhorn; for `mass` close to but below 1 the ascent is
slow (as POT's Dykstra is) and `info["converged"]` says when it stopped early.
Memory is `O(n + m)` besides the cost (Dykstra keeps three `[n, m]`
correction matrices).
"""
import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp

from fm.couplings import sinkhorn

__all__ = ["solve_cost", "check_mass", "Partial"]


def solve_cost(cost: jax.Array, epsilon: jax.Array, mass: float = 1.0, threshold: float = 1e-3,
               max_iterations: int = 1000) -> Tuple[jax.Array, dict]:
  """Log-domain entropic partial OT between uniform measures.

  Args:
    cost: `[n, m]` cost matrix (entries `+inf` are forbidden pairs).
    epsilon: absolute entropic regularisation (POT's `reg`).
    mass: transported mass in (0, 1] (POT's `m`).
    threshold: stop when the dual variables change by at most this in a sweep.
    max_iterations: sweep cap (POT's `numItermax`).

  Returns:
    `log_plan` `[n, m]` (its total mass is `mass`) and a dict with
    "converged", "iterations", "epsilon", "mass".
  """
  n, m = cost.shape
  dt = cost.dtype
  eps = jnp.asarray(epsilon, dt)
  log_a, log_b, log_mass = -math.log(n), -math.log(m), math.log(mass)
  log_k = -cost / eps
  lse = jax.nn.logsumexp
  # mass = 1 = sum(a) = sum(b): the inequalities are equalities, so p and q are free (no clamp) and the
  # sweep is a balanced Sinkhorn step; clamping them would only slow convergence down to the same plan.
  clamp = (lambda v: jnp.maximum(0.0, v)) if mass < 1 else (lambda v: v)

  def body(state):
    p, q, l, it, _ = state
    p_new = clamp(lse(log_k - q[None, :], axis=1) + l - log_a)
    q_new = clamp(lse(log_k - p_new[:, None], axis=0) + l - log_b)
    l_new = log_mass - lse(log_k - p_new[:, None] - q_new[None, :])
    err = jnp.maximum(jnp.maximum(jnp.max(jnp.abs(p_new - p)), jnp.max(jnp.abs(q_new - q))),
                      jnp.abs(l_new - l))
    return p_new, q_new, l_new, it + 1, err

  def cond(state):
    *_, it, err = state
    return (it < max_iterations) & (err > threshold)

  l0 = log_mass - lse(log_k)
  init = (jnp.zeros((n,), dt), jnp.zeros((m,), dt), l0.astype(dt), jnp.asarray(0, jnp.int32),
          jnp.asarray(jnp.inf, dt))
  p, q, l, it, err = jax.lax.while_loop(cond, body, init)
  log_plan = log_k - p[:, None] - q[None, :] + l
  info = {"converged": err <= threshold, "iterations": it, "epsilon": eps,
          "mass": jnp.exp(lse(log_plan))}
  return log_plan, info


def check_mass(mass) -> None:
  """ValueError (one sentence) unless `0 < mass <= 1`."""
  number = isinstance(mass, (int, float)) and not isinstance(mass, bool)
  if not (number and math.isfinite(mass) and 0 < mass <= 1):
    raise ValueError(f"mass={mass!r} must be a number in (0, 1]: the fraction of the batch's mass that is "
                     f"transported (1 = all of it, TorchCFM's default)")


@dataclasses.dataclass(frozen=True)
class Partial(sinkhorn.EntropicPlan):
  """Entropic partial OT coupling (TorchCFM `OTPlanSampler("partial")`); pairs drawn from its plan.

  Attributes (besides `sinkhorn.EntropicPlan`'s epsilon, relative, threshold,
  max_iterations and replace; `replace=True` is the only draw in which `mass < 1`
  leaves expensive points unpaired):
    mass: transported mass in (0, 1] (POT `m`; default 1, TorchCFM's).
  """

  mass: float = 1.0

  def check(self) -> None:
    check_mass(self.mass)

  def solve_cost(self, cost: jax.Array, eps: jax.Array) -> Tuple[jax.Array, dict]:
    return solve_cost(cost, eps, self.mass, self.threshold, self.max_iterations)
