"""The compiled host auction against brute force, scipy and hard cost structures."""
import itertools

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import fm
from fm.couplings import exact
from fm.couplings.host_auction import EPS_REL, host_auction


def _cost(col, c):
  return c[np.arange(len(col)), col].sum()


def _check(c):
  col = host_auction(c)
  n = c.shape[0]
  assert col.dtype == np.int32 and sorted(col.tolist()) == list(range(n))
  r, s = linear_sum_assignment(c)
  assert _cost(col, c) - c[r, s].sum() <= EPS_REL * (c.max() - c.min()) + 1e-12
  return col


def test_brute_force_small():
  rng = np.random.default_rng(0)
  for n in range(1, 8):
    for trial in range(10):
      c = rng.random((n, n)) if trial % 2 else rng.integers(0, 3, (n, n)).astype(float)
      best = min(sum(c[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
      col = host_auction(c)
      assert sorted(col.tolist()) == list(range(n))
      assert abs(_cost(col, c) - best) <= EPS_REL * (c.max() - c.min()) + 1e-12


@pytest.mark.parametrize("kind", ["uniform", "integer_ties", "geometric_2d", "offset", "duplicates", "8gaussians"])
def test_matches_scipy_optimum_n300(kind):
  rng = np.random.default_rng(1)
  n = 300
  if kind == "uniform":
    c = rng.random((n, n))
  elif kind == "integer_ties":
    c = rng.integers(0, 4, (n, n)).astype(float)
  elif kind == "geometric_2d":
    x, y = rng.standard_normal((2, n, 2))
    c = ((x[:, None] - y[None] - 0.5) ** 2).sum(-1)
  elif kind == "offset":
    c = 1e6 + rng.random((n, n))
  elif kind == "duplicates":  # what replicated rows/columns (unequal batch sizes) look like
    c = np.repeat(np.repeat(rng.random((n // 3, n // 3)), 3, 0), 3, 1)
  else:
    x = np.asarray(fm.data.toys.sample("gaussian", jax.random.PRNGKey(0), n), np.float64)
    y = np.asarray(fm.data.toys.sample("8gaussians", jax.random.PRNGKey(1), n), np.float64)
    c = ((x[:, None] - y[None]) ** 2).sum(-1)
  _check(c)


def test_degenerate_and_bad_inputs():
  np.testing.assert_array_equal(host_auction(np.ones((4, 4))), np.arange(4))
  np.testing.assert_array_equal(host_auction(np.zeros((1, 1))), [0])
  assert host_auction(np.zeros((0, 0))).shape == (0,)
  with pytest.raises(ValueError, match="finite"):
    host_auction(np.array([[0.0, np.inf], [1.0, 0.0]]))
  with pytest.raises(ValueError, match="square"):
    host_auction(np.zeros((2, 3)))


def test_is_the_cpu_default_and_jits():
  if jax.default_backend() == "cpu":
    assert exact._resolve("auto") == "host_auction"
  rng = np.random.default_rng(2)
  x0, x1 = (jax.numpy.asarray(rng.standard_normal((64, 2)), jax.numpy.float32) for _ in range(2))
  couple = jax.jit(fm.couplings.make("exact", solver="host_auction"))
  a, b, info = couple(jax.random.PRNGKey(0), x0, x1)
  c = np.asarray(fm.couplings.sqdist(x0, x1), np.float64)
  r, s = linear_sum_assignment(c)
  np.testing.assert_allclose(float(info["cost_after"]) * 64, c[r, s].sum(), rtol=1e-5)
  # vmap over a batch of problems (sequential host calls)
  perms = jax.vmap(lambda c: fm.couplings.assignment(c, "host_auction"))(jax.numpy.stack([c, c.T]))
  assert perms.shape == (2, 64)
