"""Host exact assignment on a dual-reduced cost ("reduced" solver)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm
from fm.couplings import exact, reduced_lap


def _opt(c):
  r, col = scipy.optimize.linear_sum_assignment(c)
  return c[r, col].sum()


def _sq(a, b):
  return ((a[:, None] - b[None]) ** 2).sum(-1)


def _is_perm(col, n):
  return sorted(np.asarray(col).tolist()) == list(range(n))


def test_reduced_is_a_solver_option():
  assert "reduced" in fm.couplings.exact.SOLVERS


@pytest.mark.parametrize("d", [2, 5])
def test_brute_force(d):
  rng = np.random.default_rng(d)
  for n in (1, 2, 3, 5, 7):
    for _ in range(3):
      c = _sq(rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5)
      best = min(c[np.arange(n), list(p)].sum()
                 for p in itertools.permutations(range(n)))
      col = reduced_lap.reduced_assignment(c)
      assert _is_perm(col, n)
      np.testing.assert_allclose(c[np.arange(n), col].sum(), best, rtol=1e-12)


def test_brute_force_jit_coupling():
  couple = jax.jit(fm.couplings.make("exact", solver="reduced"))
  rng = np.random.default_rng(0)
  for n in (2, 5, 7):
    x0 = jnp.asarray(rng.standard_normal((n, 3)), jnp.float32)
    x1 = jnp.asarray(rng.standard_normal((n, 3)) + 0.5, jnp.float32)
    c = _sq(np.asarray(x0, np.float64), np.asarray(x1, np.float64))
    best = min(c[np.arange(n), list(p)].sum()
               for p in itertools.permutations(range(n)))
    x0p, x1p = fm.couplings.apply(*couple(jax.random.PRNGKey(n), x0, x1)[:2], x0, x1)
    got = _sq(np.asarray(x0p, np.float64), np.asarray(x1p, np.float64)).diagonal().sum()
    np.testing.assert_allclose(got, best, rtol=1e-6)


@pytest.mark.parametrize("d", [2, 768])
def test_matches_scipy_n256(d):
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.standard_normal((256, d)), jnp.float32)
  x1 = jnp.asarray(rng.standard_normal((256, d)) + 0.5, jnp.float32)
  cost = fm.couplings.sqdist(x0, x1)
  c = np.asarray(cost, np.float64)
  perm = np.asarray(jax.jit(fm.couplings.assignment, static_argnums=1)(cost, "reduced"))
  assert _is_perm(perm, 256)
  np.testing.assert_allclose(c[np.arange(256), perm].sum(), _opt(c), rtol=1e-12)


@pytest.mark.parametrize("kind", ["uniform", "integer_ties", "offset", "duplicated", "toy"])
def test_adversarial_costs_match_scipy(kind):
  # n >= 128 takes the subsample-dual path; these costs make its estimate poor.
  rng = np.random.default_rng(3)
  n = 300
  if kind == "uniform":
    c = rng.uniform(size=(n, n))
  elif kind == "integer_ties":
    c = rng.integers(0, 4, size=(n, n)).astype(np.float64)
  elif kind == "offset":
    c = 1e6 + rng.uniform(size=(n, n))
  elif kind == "duplicated":  # as exact_plan builds for unequal batch sizes
    base = _sq(rng.standard_normal((n // 3, 2)), rng.standard_normal((n // 3, 2)))
    c = np.repeat(np.repeat(base, 3, 0), 3, 1)
  else:  # gaussian -> 8 gaussians on a radius-5 circle
    ang = rng.integers(0, 8, n) * np.pi / 4
    y = 5 * np.c_[np.cos(ang), np.sin(ang)] + 0.5 * rng.standard_normal((n, 2))
    c = _sq(rng.standard_normal((n, 2)), y)
  col = reduced_lap.reduced_assignment(c)
  assert _is_perm(col, n)
  np.testing.assert_allclose(c[np.arange(n), col].sum(), _opt(c), rtol=1e-12)


def test_assignment_duals_certificate():
  rng = np.random.default_rng(4)
  for c in (_sq(rng.standard_normal((60, 2)), rng.standard_normal((60, 2)) + 1.0),
            rng.uniform(size=(40, 40))):
    n = len(c)
    col, u, v = reduced_lap.assignment_duals(c)
    slack = c - u[:, None] - v[None, :]
    tol = 1e-9 * np.abs(c).max()
    assert slack.min() >= -tol  # dual feasible
    np.testing.assert_allclose(slack[np.arange(n), col], 0, atol=tol)  # tight
    np.testing.assert_allclose(u.sum() + v.sum(), _opt(c), rtol=1e-9)  # no gap


def test_unequal_plan_matches_scipy_solver():
  rng = np.random.default_rng(5)
  x0 = jnp.asarray(rng.standard_normal((48, 2)), jnp.float32)
  x1 = jnp.asarray(rng.standard_normal((36, 2)), jnp.float32)  # lcm 144
  c = _sq(np.asarray(x0, np.float64), np.asarray(x1, np.float64))
  p_r = np.asarray(fm.couplings.plan(x0, x1, method="exact", solver="reduced"), np.float64)
  p_s = np.asarray(fm.couplings.plan(x0, x1, method="exact", solver="scipy"), np.float64)
  np.testing.assert_allclose(p_r.sum(1), 1 / 48, atol=1e-6)
  np.testing.assert_allclose(p_r.sum(0), 1 / 36, atol=1e-6)
  np.testing.assert_allclose((p_r * c).sum(), (p_s * c).sum(), rtol=1e-6)


def test_nonfinite_falls_back_to_plain_scipy():
  c = np.array([[1.0, np.inf], [2.0, 0.5]])
  np.testing.assert_array_equal(reduced_lap.reduced_assignment(c), [0, 1])
