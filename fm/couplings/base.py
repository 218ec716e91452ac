"""Shared helpers for minibatch couplings: costs, pair draws, applying indices, diagnostics, independent.

Every coupling is called as `i0, i1, info = couple(key, x0, x1)`: the pairing
is the index arrays `i0, i1` `[B]` int32 (pair k is `(x0[i0[k]], x1[i1[k]])`),
and `apply(i0, i1, a, b)` (or `gather`) applies them to anything attached to
the examples (arrays, labels, any pytree with a leading batch axis).
"""
import dataclasses
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sqdist", "sqdist_host", "pair_cost", "sample_rows", "sample_joint", "draw", "gather", "apply",
           "forbid", "Coupling", "Independent", "PlanCoupling"]

Info = Dict[str, jax.Array]


def _flat(x: jax.Array) -> jax.Array:
  return jnp.reshape(x, (x.shape[0], -1))


def sqdist(x0: jax.Array, x1: jax.Array) -> jax.Array:
  """Squared Euclidean cost matrix between flattened samples.

  Args:
    x0: source samples `[n, *shape]`.
    x1: target samples `[m, *shape]`.

  Returns:
    cost `[n, m]`, `cost[i, j] = ||x0[i] - x1[j]||^2`, clipped at 0.
  """
  a, b = _flat(x0), _flat(x1)
  if a.shape[1] <= 8:  # low dimension: direct differences, no cancellation.
    return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
  aa = jnp.sum(a * a, axis=1)
  bb = jnp.sum(b * b, axis=1)
  c = aa[:, None] + bb[None, :] - 2.0 * (a @ b.T)
  return jnp.maximum(c, 0.0)


def sqdist_host(x0: np.ndarray, x1: np.ndarray, block_elems: int = 1 << 24) -> np.ndarray:
  """`sqdist` in NumPy, float32, built in row blocks: the `[n, m]` result is the only large array.

  Args:
    x0: `[n, *shape]`; x1: `[m, *shape]` (host arrays).
    block_elems: bound on the elements of each block's temporaries.

  Returns:
    cost `[n, m]` float32 (same formula as `sqdist`; rounding may differ in the last bits).
  """
  a = np.asarray(x0, np.float32).reshape(x0.shape[0], -1)
  b = np.asarray(x1, np.float32).reshape(x1.shape[0], -1)
  n, m, d = a.shape[0], b.shape[0], a.shape[1]
  out = np.empty((n, m), np.float32)
  low = d <= 8
  rows = max(1, block_elems // max(1, m * (d if low else 2)))
  bb = None if low else np.einsum("ij,ij->i", b, b)
  for i in range(0, n, rows):
    blk = a[i:i + rows]
    if low:
      out[i:i + rows] = np.sum((blk[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    else:
      c = blk @ b.T
      c *= -2.0
      c += np.einsum("ij,ij->i", blk, blk)[:, None]
      c += bb[None, :]
      np.maximum(c, 0.0, out=out[i:i + rows])
  return out


def pair_cost(x0: jax.Array, x1: jax.Array) -> jax.Array:
  """Mean squared distance of the pairs `(x0[i], x1[i])`; inputs `[B, *shape]`.

  With unequal batch sizes the first `min(n, m)` pairs are used.
  """
  k = min(x0.shape[0], x1.shape[0])
  x0, x1 = x0[:k], x1[:k]
  return jnp.mean(jnp.sum((_flat(x0) - _flat(x1)) ** 2, axis=1))


def sample_rows(key: jax.Array, log_plan: jax.Array) -> jax.Array:
  """For each row i draw `j ~ plan[i, :] / sum_j plan[i, j]`.

  Gumbel-max on the log-plan: one `[n, m]` draw, never NaN for finite
  log-plans. Returns column indices `[n]`.
  """
  return jax.random.categorical(key, log_plan, axis=1).astype(jnp.int32)


def sample_joint(key: jax.Array, plan: jax.Array, num: int) -> Tuple[jax.Array, jax.Array]:
  """Draw `num` flat pairs `(i, j) ~ plan` with replacement (inverse CDF).

  Uses one cumulative sum over the `[n, m]` plan and `num` uniforms.
  Returns row indices `[num]` and column indices `[num]`.
  """
  n, m = plan.shape
  cdf = jnp.cumsum(jnp.reshape(plan, (-1,)))
  u = jax.random.uniform(key, (num,), dtype=cdf.dtype) * cdf[-1]
  flat = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n * m - 1)
  return (flat // m).astype(jnp.int32), (flat % m).astype(jnp.int32)


def draw(key: jax.Array, log_plan: jax.Array, replace: bool) -> Tuple[jax.Array, jax.Array]:
  """Pairs drawn from a (possibly unnormalised) log-plan `[n, m]`: indices `(i0, i1)`, `[n]` int32 each.

  `replace=False`: x0 kept in order (`i0 = arange(n)`), `i1[i] ~ plan[i, :] / rowsum`
  (`sample_rows`). `replace=True`: TorchCFM's `sample_map`, n flat pairs
  `(i, j) ~ plan / sum(plan)` drawn jointly with replacement (`sample_joint`).
  """
  n = log_plan.shape[0]
  if replace:
    return sample_joint(key, jnp.exp(log_plan), n)
  return jnp.arange(n, dtype=jnp.int32), sample_rows(key, log_plan)


def gather(tree: Any, idx: jax.Array) -> Any:
  """`leaf[idx]` along the leading (batch) axis of every leaf of `tree`; `idx` `[B]` int."""
  return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[idx], tree)


def apply(i0: jax.Array, i1: jax.Array, a: Any, b: Any) -> Tuple[Any, Any]:
  """Applies a coupling's pairing: `(gather(a, i0), gather(b, i1))`.

  Args:
    i0, i1: `[B]` int32 from `couple(key, x0, x1)`.
    a: x0 or any pytree of x0-side arrays `[n, ...]` (e.g. `(x0, y0)`).
    b: x1 or any pytree of x1-side arrays `[m, ...]` (e.g. `(x1, labels)`).

  Returns:
    the re-paired `a` and `b`, each leaf `[B, ...]`.
  """
  return gather(a, i0), gather(b, i1)


def _info(x0, x1, i0, i1, **extra: Any) -> Info:
  x0p, x1p = apply(i0, i1, x0, x1)
  out = {"cost_before": pair_cost(x0, x1), "cost_after": pair_cost(x0p, x1p)}
  out.update({k: jnp.asarray(v) for k, v in extra.items()})
  return out


class Coupling:
  """Base of every coupling: `couple(key, x0, x1, y1=None) -> (i0, i1, info)`.

  A subclass defines `pairs(key, x0, x1, allowed=None)`; `allowed` `[n, m]`
  bool (None: all pairs) is the set of pairs the plan may use, given by
  `fm.couplings.condition.WithinClass`. The labels `y1` are used only by that
  wrapper (`condition="within_class"`); a coupling itself ignores them.
  """

  def pairs(self, key: jax.Array, x0: jax.Array, x1: jax.Array, allowed: jax.Array | None = None):
    raise NotImplementedError

  def __call__(self, key: jax.Array, x0: jax.Array, x1: jax.Array, y1: jax.Array | None = None):
    del y1
    return self.pairs(key, x0, x1)


def forbid(cost: jax.Array, allowed: jax.Array | None, value) -> jax.Array:
  """`cost` `[n, m]` with `value` where `allowed` is False (unchanged if `allowed` is None)."""
  return cost if allowed is None else jnp.where(allowed, cost, jnp.asarray(value, cost.dtype))


@dataclasses.dataclass(frozen=True)
class Independent(Coupling):
  """Independent coupling: the identity pairing `i0 = i1 = arange(B)`, `B = min(n, m)`.

  (Under `condition="within_class"` the wrapper pairs at random inside each class.)
  """

  def pairs(self, key: jax.Array, x0: jax.Array, x1: jax.Array, allowed: jax.Array | None = None):
    if allowed is not None:
      raise ValueError("the independent coupling takes no pair mask; use condition='within_class'")
    del key
    idx = jnp.arange(min(x0.shape[0], x1.shape[0]), dtype=jnp.int32)
    return idx, idx, _info(x0, x1, idx, idx)

  def plan(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    """Uniform product plan `[n, m]` with entries `1 / (n m)`."""
    n, m = x0.shape[0], x1.shape[0]
    return jnp.full((n, m), 1.0 / (n * m), dtype=jnp.result_type(x0.dtype, jnp.float32))


class PlanCoupling(Coupling):
  """Base of the couplings whose pairs are drawn from a dense plan (unbalanced, partial).

  A subclass defines `replace` (see `draw`) and `log_plan_of_cost(cost) ->
  (log_plan [n, m], info)`; the cost is `sqdist(x0, x1)`, TorchCFM's
  `torch.cdist(x0, x1) ** 2` (unnormalised).
  """

  replace: bool = False

  def log_plan_of_cost(self, cost: jax.Array, allowed: jax.Array | None = None) -> Tuple[jax.Array, Info]:
    """`(log_plan [n, m], info)`; pairs outside `allowed` get cost `+inf` (plan 0)."""
    raise NotImplementedError

  def plan(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    """The plan `[n, m]` (its mass is the solver's, not necessarily 1)."""
    return jnp.exp(self.log_plan_of_cost(_float_cost(x0, x1))[0])

  def pairs(self, key: jax.Array, x0: jax.Array, x1: jax.Array, allowed: jax.Array | None = None):
    log_plan, info = self.log_plan_of_cost(_float_cost(x0, x1), allowed)
    i0, i1 = draw(key, log_plan, self.replace)
    return i0, i1, _info(x0, x1, i0, i1, **info)


def _float_cost(x0: jax.Array, x1: jax.Array) -> jax.Array:
  cost = sqdist(x0, x1)
  return cost if jnp.issubdtype(cost.dtype, jnp.floating) else cost.astype(jnp.float32)
