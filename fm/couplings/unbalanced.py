"""Unbalanced entropic OT coupling: POT's `sinkhorn_knopp_unbalanced`, TorchCFM's "unbalanced", in JAX.

The plan solves, for uniform `a = 1/n`, `b = 1/m` and the unnormalised
squared-Euclidean cost `M` `[n, m]`,

    min_{P >= 0}  <P, M> + epsilon KL(P | a b^T) + reg_m KL(P 1 | a) + reg_m KL(P^T 1 | b)

(generalised KL), which is what TorchCFM's `OTPlanSampler("unbalanced", reg,
reg_m).get_map` computes with `ot.unbalanced.sinkhorn_knopp_unbalanced(a, b,
M, reg, reg_m)` (POT >= 0.9.5, whose default `reg_type="kl"` is this KL to
`a b^T`). Names: `epsilon` = POT's `reg`; `reg_m` = POT's `reg_m` (one value
for both marginals); in ott-jax terms `tau_a = tau_b = reg_m / (reg_m +
epsilon)`. `reg_m -> inf` is balanced Sinkhorn.

The iterations are POT's scaling updates `u = (a / K v)^tau`,
`v = (b / K^T u)^tau` taken in the log domain (`f = log u`, `g = log v`), so
they neither under- nor overflow for any epsilon; they run inside `jit` with a
`while_loop` until the largest change of `f` and `g` in one iteration (the
relative change of the scalings) is below `threshold`.
"""
import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp

from fm.couplings import sinkhorn

__all__ = ["solve_cost", "Unbalanced"]


def solve_cost(cost: jax.Array, epsilon: jax.Array, reg_m: float, threshold: float = 1e-3,
               max_iterations: int = 1000) -> Tuple[jax.Array, dict]:
  """Log-domain unbalanced Sinkhorn between uniform measures.

  Args:
    cost: `[n, m]` cost matrix (entries `+inf` are forbidden pairs).
    epsilon: absolute entropic regularisation (POT's `reg`).
    reg_m: marginal relaxation (POT's `reg_m`), finite > 0.
    threshold: stop when `max(|f - f_prev|, |g - g_prev|) <= threshold`.
    max_iterations: iteration cap (POT's `numItermax`).

  Returns:
    `log_plan` `[n, m]` (not normalised: its mass is the unbalanced plan's) and
    a dict with "converged", "iterations", "epsilon", "mass".
  """
  n, m = cost.shape
  dt = cost.dtype
  eps = jnp.asarray(epsilon, dt)
  log_a, log_b = -math.log(n), -math.log(m)
  log_k = -cost / eps + (log_a + log_b)
  tau = jnp.asarray(reg_m, dt) / (jnp.asarray(reg_m, dt) + eps)

  def update(f, g):
    f_new = tau * (log_a - jax.nn.logsumexp(log_k + g[None, :], axis=1))
    g_new = tau * (log_b - jax.nn.logsumexp(log_k + f_new[:, None], axis=0))
    err = jnp.maximum(jnp.max(jnp.abs(f_new - f)), jnp.max(jnp.abs(g_new - g)))
    return f_new, g_new, err

  def cond(state):
    _, _, it, err = state
    return (it < max_iterations) & (err > threshold)

  def body(state):
    f, g, it, _ = state
    f, g, err = update(f, g)
    return f, g, it + 1, err

  init = (jnp.zeros((n,), dt), jnp.zeros((m,), dt), jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dt))
  f, g, it, err = jax.lax.while_loop(cond, body, init)
  log_plan = f[:, None] + log_k + g[None, :]
  info = {"converged": err <= threshold, "iterations": it, "epsilon": eps,
          "mass": jnp.exp(jax.nn.logsumexp(log_plan))}
  return log_plan, info


def check_reg_m(reg_m) -> None:
  """ValueError (one sentence) unless `reg_m` is a finite number > 0."""
  if not sinkhorn._finite_positive_f32(reg_m):  # pylint: disable=protected-access
    raise ValueError(f"reg_m={reg_m!r} must be a finite number > 0 (also in float32); "
                     f"the balanced limit reg_m = inf is the 'sinkhorn' coupling")


@dataclasses.dataclass(frozen=True)
class Unbalanced(sinkhorn.EntropicPlan):
  """Unbalanced entropic OT coupling (TorchCFM `OTPlanSampler("unbalanced")`); pairs drawn from its plan.

  Attributes (besides `sinkhorn.EntropicPlan`'s epsilon, relative, threshold,
  max_iterations and replace):
    reg_m: marginal relaxation (POT/TorchCFM `reg_m`, default 1.0 as TorchCFM).
  """

  reg_m: float = 1.0

  def check(self) -> None:
    check_reg_m(self.reg_m)

  def solve_cost(self, cost: jax.Array, eps: jax.Array) -> Tuple[jax.Array, dict]:
    return solve_cost(cost, eps, self.reg_m, self.threshold, self.max_iterations)
