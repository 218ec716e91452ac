"""On-device exact assignment: epsilon-scaling Jacobi auction in pure JAX."""
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["auction"]


def auction(
    cost: jax.Array,
    *,
    chunk: int = 32,
    factor: float = 6.0,
    max_rounds: int = 200_000,
) -> Tuple[jax.Array, jax.Array]:
  """Min-cost assignment of a square cost matrix by epsilon-scaling auction.

  Forward auction (Bertsekas): up to `chunk` unassigned rows bid at once
  (Jacobi), the highest bid per column wins. Epsilon shrinks by `factor`
  per phase; assignments that still satisfy eps-complementary slackness are
  kept between phases. The final eps is a few ulps of the cost range, so the
  result is within `n * eps_final` of the optimum (optimal up to the
  floating-point resolution of `cost`; run in float64 for full precision).

  Args:
    cost: `[n, n]` cost matrix.
    chunk: number of unassigned rows bidding per round.
    factor: epsilon reduction per phase.
    max_rounds: total bidding-round guard (never loops forever).

  Returns:
    `perm` `[n]` (row i -> column perm[i]) and `converged` (bool scalar;
    False only if `max_rounds` was hit, in which case `perm` is completed
    greedily and still a permutation).
  """
  n = cost.shape[0]
  dt = cost.dtype
  chunk = min(chunk, n)
  c = cost - jnp.min(cost, axis=1, keepdims=True)
  c = c - jnp.min(c, axis=0, keepdims=True)
  scale = jnp.max(c)
  fin = jnp.finfo(dt)
  floor = 4 * fin.eps * jnp.maximum(scale, fin.tiny)
  a = -c
  big = jnp.int32(n)
  cols = jnp.arange(n, dtype=jnp.int32)

  def bid_round(s):
    p, r2c, c2r, eps, it = s
    idx = jnp.nonzero(r2c < 0, size=chunk, fill_value=n)[0].astype(jnp.int32)
    valid = idx < n
    vals = a[jnp.minimum(idx, n - 1)] - p[None, :]  # [K, n]
    j1 = jnp.argmax(vals, axis=1).astype(jnp.int32)
    v1 = jnp.max(vals, axis=1)
    v2 = jnp.max(jnp.where(cols[None, :] == j1[:, None], -jnp.inf, vals), axis=1)
    v2 = jnp.where(jnp.isfinite(v2), v2, v1)  # n == 1
    bid = jnp.where(valid, p[j1] + (v1 - v2) + eps, -jnp.inf)
    best = jnp.full((n,), -jnp.inf, dt).at[j1].max(bid)
    win = jnp.full((n,), big).at[j1].min(
        jnp.where(valid & (bid >= best[j1]), idx, big))
    won = win < n
    old = jnp.where(won, c2r, -1)
    r2c = r2c.at[jnp.where(old >= 0, old, n)].set(-1, mode="drop")
    r2c = r2c.at[jnp.where(won, win, n)].set(cols, mode="drop")
    c2r = jnp.where(won, win, c2r)
    p = jnp.where(won, best, p)
    return p, r2c, c2r, eps, it + 1

  def phase(s):
    p, r2c, c2r, eps, it = s
    eps = jnp.maximum(eps / factor, floor)
    vals = a - p[None, :]
    cur = jnp.take_along_axis(vals, jnp.maximum(r2c, 0)[:, None], 1)[:, 0]
    bad = (r2c >= 0) & (cur < jnp.max(vals, axis=1) - eps)
    c2r = c2r.at[jnp.where(bad, r2c, n)].set(-1, mode="drop")
    r2c = jnp.where(bad, -1, r2c)
    return lax.while_loop(
        lambda s: jnp.any(s[1] < 0) & (s[4] < max_rounds), bid_round,
        (p, r2c, c2r, eps, it))

  init = (jnp.zeros((n,), dt), -jnp.ones((n,), jnp.int32),
          -jnp.ones((n,), jnp.int32), jnp.maximum(scale / 4, floor) * factor,
          jnp.int32(0))
  _, r2c, c2r, _, it = lax.while_loop(
      lambda s: (s[3] > floor) & (s[4] < max_rounds), phase, init)
  converged = jnp.all(r2c >= 0)
  # Guard path (max_rounds hit): fill free rows with free columns in order.
  free_r = jnp.nonzero(r2c < 0, size=n, fill_value=n)[0]
  free_c = jnp.nonzero(c2r < 0, size=n, fill_value=n)[0]
  r2c = r2c.at[free_r].set(free_c.astype(jnp.int32), mode="drop")
  return r2c, converged
