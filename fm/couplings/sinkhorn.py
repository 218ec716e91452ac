"""Entropic minibatch OT couplings (ott-jax Sinkhorn, log domain)."""
import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from fm.couplings import base

__all__ = ["DEFAULT_RELATIVE", "resolve_epsilon", "solve", "Sinkhorn", "SB"]

# eps = DEFAULT_RELATIVE * std(cost). The std (not the mean) of the cost is the
# scale of cost *differences*, which stays meaningful in high dimension: at
# d=3072, n=1024, 0.05*std closes ~97% of the independent -> exact OT cost gap
# while 0.05*mean gives an almost independent plan (12%).
DEFAULT_RELATIVE = 0.05


def resolve_epsilon(cost: jax.Array, epsilon: Optional[float],
                    relative: Optional[float]) -> jax.Array:
  """Absolute epsilon: `epsilon` if given, else `relative * std(cost)`."""
  if epsilon is not None:
    return jnp.asarray(epsilon, cost.dtype)
  rel = DEFAULT_RELATIVE if relative is None else relative
  tiny = jnp.finfo(cost.dtype).tiny
  return jnp.maximum(rel * jnp.std(cost), tiny).astype(cost.dtype)


def solve(
    x0: jax.Array,
    x1: jax.Array,
    epsilon: Optional[float] = None,
    relative: Optional[float] = None,
    threshold: float = 1e-3,
    max_iterations: int = 1000,
) -> Tuple[jax.Array, dict]:
  """Log-domain Sinkhorn between uniform empirical measures.

  Args:
    x0: `[n, *shape]`; x1: `[m, *shape]`.
    epsilon: absolute entropic regularisation on the squared-Euclidean cost.
    relative: if `epsilon` is None, `epsilon = relative * std(cost)`.
    threshold: marginal-error stopping threshold (ott `threshold`).
    max_iterations: iteration cap (ott `max_iterations`).

  Returns:
    `log_plan` `[n, m]` (`plan = exp(log_plan)`, sums to ~1) and a dict with
    "converged", "iterations", "epsilon".
  """
  cost = base.sqdist(x0, x1)
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    cost = cost.astype(jnp.float32)
  eps = resolve_epsilon(cost, epsilon, relative)
  geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
  solver = ott_sinkhorn.Sinkhorn(
      lse_mode=True, threshold=threshold, max_iterations=max_iterations,
      inner_iterations=min(10, max_iterations))
  out = solver(linear_problem.LinearProblem(geom))
  f = jnp.where(jnp.isfinite(out.f), out.f, 0.0)
  g = jnp.where(jnp.isfinite(out.g), out.g, 0.0)
  log_plan = (f[:, None] + g[None, :] - cost) / eps
  # Renormalise in log space so the plan sums to 1 even when not converged.
  log_plan = log_plan - jax.nn.logsumexp(log_plan)
  info = {
      "converged": jnp.asarray(out.converged),
      "iterations": jnp.asarray(out.n_iters, jnp.int32),
      "epsilon": eps,
  }
  return log_plan, info


@dataclasses.dataclass(frozen=True)
class Sinkhorn:
  """Entropic OT coupling; pairs are drawn from the Sinkhorn plan.

  Attributes:
    epsilon: absolute epsilon (squared-Euclidean cost); overrides `relative`.
    relative: `epsilon = relative * std(cost)` when `epsilon` is None
      (default `DEFAULT_RELATIVE`).
    threshold, max_iterations: Sinkhorn stopping rule.
    replace: False (default): x0 kept in order, for each row i a partner
      `j ~ plan[i, :] / rowsum` (x1 may repeat). True: TorchCFM-style, B
      flat pairs `(i, j) ~ plan` drawn jointly with replacement (both sides
      resampled).
  """

  epsilon: Optional[float] = None
  relative: Optional[float] = None
  threshold: float = 1e-3
  max_iterations: int = 1000
  replace: bool = False

  def _eps_args(self):
    return self.epsilon, self.relative

  def plan(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    eps, rel = self._eps_args()
    log_plan, _ = solve(x0, x1, eps, rel, self.threshold, self.max_iterations)
    return jnp.exp(log_plan)

  def __call__(self, key: jax.Array, x0: jax.Array, x1: jax.Array):
    eps, rel = self._eps_args()
    log_plan, info = solve(x0, x1, eps, rel, self.threshold, self.max_iterations)
    if self.replace:
      i, j = base.sample_joint(key, jnp.exp(log_plan), x0.shape[0])
      x0p, x1p = x0[i], x1[j]
    else:
      x0p, x1p = x0, x1[base.sample_rows(key, log_plan)]
    return x0p, x1p, base._info(x0, x1, x0p, x1p, **info)


@dataclasses.dataclass(frozen=True)
class SB(Sinkhorn):
  """Schrodinger-bridge coupling (SB-CFM): Sinkhorn with absolute
  `epsilon = 2 * sigma**2` on the unnormalised squared-Euclidean cost
  (TorchCFM convention; default `sigma=1.0`, the TorchCFM runner default)."""

  sigma: float = 1.0

  def _eps_args(self):
    return 2.0 * self.sigma ** 2, None
