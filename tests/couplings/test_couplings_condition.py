"""condition="within_class": pairs keep their class, exact OT is optimal per class, x0's classes are uniform."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm
from fm.couplings import base, condition, partial, sinkhorn

Y1 = np.array([2, 0, 1, 2, 2, 0, 1, 2, 2, 1, 2, 2, 0, 2, 1, 2, 2, 2, 1, 2, 2, 1, 2, 2])  # sizes 3, 6, 15
CONFIGS = [("independent", {}), ("exact", {}), ("exact", {"solver": "auction"}), ("sinkhorn", {}),
           ("sinkhorn", {"replace": True}), ("sb", {"sigma": 0.3}), ("unbalanced", {"reg_m": 0.5}),
           ("partial", {"mass": 0.6}), ("partial", {"mass": 0.6, "replace": True})]


def _data(seed, n, d=2):
  k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k0, (n, d)), jax.random.normal(k1, (n, d)) * 2.0 + 1.0


def _sq(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_every_pair_keeps_its_class(name, kw):
  """x0[i0[k]] was assigned class y1[i1[k]] (the assignment: `assign_classes` on the first half of the key)."""
  couple = jax.jit(fm.couplings.make(name, condition="within_class", **kw))
  x0, x1 = _data(0, len(Y1))
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    i0, i1, info = couple(key, x0, x1, jnp.asarray(Y1))
    y0 = np.asarray(condition.assign_classes(jax.random.split(key)[0], jnp.asarray(Y1))[0])
    np.testing.assert_array_equal(y0[np.asarray(i0)], Y1[np.asarray(i1)])
    assert np.bincount(y0).tolist() == np.bincount(Y1).tolist()
    assert {"cost_before", "cost_after"} <= set(info)


@pytest.mark.parametrize("solver", ["host_auction", "scipy", "auction"])
def test_exact_is_optimal_inside_each_class(solver):
  """Against scipy on each block: the x0 given class c and the x1 of class c."""
  couple = jax.jit(fm.couplings.make("exact", condition="within_class", solver=solver))
  for seed in range(3):
    x0, x1 = _data(seed, len(Y1), d=3)
    i0, i1, _ = couple(jax.random.PRNGKey(seed), x0, x1, jnp.asarray(Y1))
    i0, i1 = np.asarray(i0), np.asarray(i1)
    assert sorted(i1.tolist()) == list(range(len(Y1))) and (i0 == np.arange(len(Y1))).all()
    cost = _sq(x0, x1)
    for c in range(3):
      rows = i0[Y1[i1] == c]
      cols = np.flatnonzero(Y1 == c)
      block = cost[np.ix_(rows, cols)]
      r, s = scipy.optimize.linear_sum_assignment(block)
      got = cost[rows, i1[Y1[i1] == c]].sum()
      np.testing.assert_allclose(got, block[r, s].sum(), rtol=1e-6)


def test_x0_of_a_class_are_a_uniformly_random_subset():
  """Over 3000 keys the 2 x0 given class 0 (of 6) are each of the 15 subsets equally often (chi-square)."""
  y1 = jnp.array([1, 0, 1, 1, 0, 1])
  x0, x1 = _data(5, 6)
  x0 = x0.at[0].set(x1[1]).at[1].set(x1[4])  # x0[0], x0[1] sit on the class-0 targets: cost must not matter
  couple = fm.couplings.make("exact", condition="within_class")
  keys = jax.random.split(jax.random.PRNGKey(0), 3000)
  _, i1, _ = jax.jit(jax.vmap(couple, in_axes=(0, None, None, None)))(keys, x0, x1, y1)
  subsets = [tuple(np.flatnonzero(np.asarray(y1)[row] == 0)) for row in np.asarray(i1)]
  index = {s: k for k, s in enumerate(itertools.combinations(range(6), 2))}
  counts = np.bincount([index[s] for s in subsets], minlength=15)
  chi2 = ((counts - 200.0) ** 2 / 200.0).sum()
  assert chi2 < 36.1, (chi2, counts)  # 14 degrees of freedom: P(chi2 > 36.1) = 1e-3


def test_entropic_masked_plan_is_the_per_block_plan():
  """Sinkhorn (ott) and full-mass partial with the class mask equal the balanced plans of the blocks."""
  x0, x1 = _data(3, len(Y1))
  y0 = np.asarray(condition.assign_classes(jax.random.PRNGKey(1), jnp.asarray(Y1))[0])
  allowed = jnp.asarray(y0[:, None] == Y1[None, :])
  eps = 0.5
  p_sk = np.exp(np.asarray(jax.jit(lambda a, b, m: sinkhorn.solve(a, b, eps, threshold=1e-6, max_iterations=20000,
                                                                   allowed=m)[0])(x0, x1, allowed)))
  with jax.enable_x64(True):
    cost = base.sqdist(jnp.asarray(x0, jnp.float64), jnp.asarray(x1, jnp.float64))
    p_pa = np.exp(np.asarray(partial.solve_cost(base.forbid(cost, allowed, jnp.inf), eps, 1.0, 1e-12, 100000)[0]))
  for p in (p_sk, p_pa):
    assert (p[~np.asarray(allowed)] == 0).all()
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
  for c in range(3):
    rows, cols = np.flatnonzero(y0 == c), np.flatnonzero(Y1 == c)
    with jax.enable_x64(True):
      block = np.exp(np.asarray(partial.solve_cost(cost[np.ix_(rows, cols)], eps, 1.0, 1e-12, 100000)[0]))
    share = len(rows) / len(Y1)
    np.testing.assert_allclose(p_pa[np.ix_(rows, cols)], share * block, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(p_sk[np.ix_(rows, cols)], share * block, rtol=0, atol=1e-3 * block.max())


def test_bad_condition_and_missing_labels():
  with pytest.raises(ValueError, match="'across'.*none, within_class"):
    fm.couplings.make("exact", condition="across")
  couple = fm.couplings.make("sinkhorn", condition="within_class")
  x0, x1 = _data(0, 8)
  with pytest.raises(ValueError, match="needs the labels y1"):
    couple(jax.random.PRNGKey(0), x0, x1)
  with pytest.raises(ValueError, match="one batch size"):
    couple(jax.random.PRNGKey(0), x0, x1[:6], jnp.zeros(6, jnp.int32))
  with pytest.raises(ValueError, match="condition"):
    fm.couplings.make("exact", bogus=1)


def test_condition_none_ignores_labels_and_pairs_as_before():
  x0, x1 = _data(4, 16)
  y1 = jnp.arange(16) % 3
  for name in ("exact", "sinkhorn", "partial"):
    couple = jax.jit(fm.couplings.make(name))
    a = couple(jax.random.PRNGKey(0), x0, x1)
    b = couple(jax.random.PRNGKey(0), x0, x1, y1)
    np.testing.assert_array_equal(a[1], b[1])
