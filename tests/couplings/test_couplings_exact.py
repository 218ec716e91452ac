"""Exact OT couplings vs brute force, scipy and linprog."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm

SOLVERS = ("auto", "host_auction", "reduced", "scipy", "auction", "hungarian")


def _np_cost(x0, x1):
  a = np.asarray(x0, np.float64).reshape(len(x0), -1)
  b = np.asarray(x1, np.float64).reshape(len(x1), -1)
  return ((a[:, None] - b[None]) ** 2).sum(-1)


def _data(seed, n, d, m=None):
  rng = np.random.default_rng(seed)
  x0 = rng.standard_normal((n, d)).astype(np.float32)
  x1 = (rng.standard_normal((m or n, d)) + 0.5).astype(np.float32)
  return jnp.asarray(x0), jnp.asarray(x1)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("d", [2, 5])
def test_brute_force(solver, d):
  couple = jax.jit(fm.couplings.make("exact", solver=solver))
  for seed in range(3):
    for n in (2, 5, 7):
      x0, x1 = _data(seed, n, d)
      c = _np_cost(x0, x1)
      best = min(c[np.arange(n), list(p)].sum()
                 for p in itertools.permutations(range(n)))
      i0, i1, info = couple(jax.random.PRNGKey(seed), x0, x1)
      np.testing.assert_array_equal(i0, np.arange(n))
      assert i1.dtype == jnp.int32 and sorted(np.asarray(i1).tolist()) == list(range(n))
      x0p, x1p = fm.couplings.apply(i0, i1, x0, x1)
      got = _np_cost(x0p, x1p).diagonal().sum()
      np.testing.assert_allclose(got, best, rtol=1e-6)
      np.testing.assert_allclose(info["cost_after"], best / n, rtol=1e-5)


@pytest.mark.parametrize("solver", ("host_auction", "scipy", "auction"))
@pytest.mark.parametrize("d", [2, 768])
def test_matches_scipy_n256(solver, d):
  x0, x1 = _data(1, 256, d)
  c = _np_cost(x0, x1)
  r, col = scipy.optimize.linear_sum_assignment(c)
  opt = c[r, col].sum()
  perm = jax.jit(fm.couplings.assignment, static_argnums=1)(
      fm.couplings.sqdist(x0, x1), solver)
  perm = np.asarray(perm)
  assert sorted(perm.tolist()) == list(range(256))
  np.testing.assert_allclose(c[np.arange(256), perm].sum(), opt, rtol=1e-6)


def test_hungarian_matches_scipy_n256():
  x0, x1 = _data(2, 256, 2)
  c = _np_cost(x0, x1)
  r, col = scipy.optimize.linear_sum_assignment(c)
  perm = np.asarray(fm.couplings.assignment(fm.couplings.sqdist(x0, x1), "hungarian"))
  np.testing.assert_allclose(c[np.arange(256), perm].sum(), c[r, col].sum(), rtol=1e-6)


def test_permutation_no_duplicates():
  x0, x1 = _data(3, 128, 2)
  i0, i1, info = fm.couplings.make("exact")(jax.random.PRNGKey(0), x0, x1)
  _, x1p = fm.couplings.apply(i0, i1, x0, x1)
  rows = {tuple(v) for v in np.asarray(x1p).tolist()}
  assert len(rows) == 128 and rows == {tuple(v) for v in np.asarray(x1).tolist()}
  assert info["cost_after"] < info["cost_before"]


@pytest.mark.parametrize("solver", ("host_auction", "scipy", "auction", "hungarian"))
def test_unequal_plan_marginals_and_linprog(solver):
  n, m = 6, 4
  x0, x1 = _data(4, n, 2, m)
  p = np.asarray(fm.couplings.plan(x0, x1, method="exact", solver=solver), np.float64)
  np.testing.assert_allclose(p.sum(1), 1 / n, atol=1e-6)
  np.testing.assert_allclose(p.sum(0), 1 / m, atol=1e-6)
  c = _np_cost(x0, x1)
  a_eq = np.concatenate([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
  b_eq = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
  lp = scipy.optimize.linprog(c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None))
  np.testing.assert_allclose((p * c).sum(), lp.fun, rtol=1e-6)


def test_unequal_couple_and_lcm_guard():
  x0, x1 = _data(5, 6, 2, 4)
  i0, i1, _ = fm.couplings.make("exact")(jax.random.PRNGKey(0), x0, x1)
  x0p, x1p = fm.couplings.apply(i0, i1, x0, x1)
  assert x0p.shape == x0.shape and x1p.shape == (6, 2) and int(i1.max()) < 4
  with pytest.raises(ValueError, match="lcm"):
    fm.couplings.plan(jnp.zeros((1023, 2)), jnp.zeros((1024, 2)))


def test_auction_degenerate_ties():
  x = jnp.zeros((16, 3))  # all costs equal: every permutation optimal
  perm = np.asarray(fm.couplings.assignment(fm.couplings.sqdist(x, x), "auction"))
  assert sorted(perm.tolist()) == list(range(16))


def test_auction_round_limit_is_reported():
  """The JAX auction that hits its round limit says so in `info["converged"]` (a greedy completion)."""
  x0, x1 = _data(11, 64, 2)
  couple = fm.couplings.make("exact", solver="auction", max_rounds=2)
  i0, i1, info = jax.jit(couple)(jax.random.PRNGKey(0), x0, x1)
  _, x1p = fm.couplings.apply(i0, i1, x0, x1)
  assert not bool(info["converged"])
  assert sorted(map(tuple, np.asarray(x1p).tolist())) == sorted(map(tuple, np.asarray(x1).tolist()))
  for solver in ("auction", "host_auction", "hungarian"):   # jitted: one compile each, not op by op
    _, _, info = jax.jit(fm.couplings.make("exact", solver=solver))(jax.random.PRNGKey(0), x0, x1)
    assert bool(info["converged"]), solver
  _, _, info = jax.jit(couple)(jax.random.PRNGKey(0), x0, x1[:32])
  assert not bool(info["converged"])   # unequal sizes: the plan's assignment reports too
  with pytest.raises(ValueError, match="max_rounds"):
    fm.couplings.make("exact", max_rounds=0)
