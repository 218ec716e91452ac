"""Sinkhorn / SB couplings: marginals, convergence to OT, robustness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm


def _data(seed, n, d, shift=0.5, scale=1.0):
  k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
  x0 = scale * jax.random.normal(k0, (n, d))
  x1 = scale * (jax.random.normal(k1, (n, d)) + shift)
  return x0, x1


def _np_cost(x0, x1):
  a = np.asarray(x0, np.float64).reshape(len(x0), -1)
  b = np.asarray(x1, np.float64).reshape(len(x1), -1)
  return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0)


def _exact_mean(c):
  r, col = scipy.optimize.linear_sum_assignment(c)
  return c[r, col].mean()


def test_marginals():
  x0, x1 = _data(0, 64, 2)
  p = np.asarray(fm.couplings.plan(x0, x1, method="sinkhorn", epsilon=0.5,
                                   threshold=1e-5, max_iterations=5000))
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
  np.testing.assert_allclose(p.sum(1), 1 / 64, rtol=1e-2)
  np.testing.assert_allclose(p.sum(0), 1 / 64, rtol=1e-2)


def test_cost_approaches_exact():
  x0, x1 = _data(1, 64, 2)
  c = _np_cost(x0, x1)
  opt = _exact_mean(c)
  solve = jax.jit(lambda eps: fm.couplings.sinkhorn.solve(
      x0, x1, eps, threshold=1e-4, max_iterations=20000)[0])
  costs = []
  for eps in (2.0, 0.5, 0.1, 0.02):
    p = np.exp(np.asarray(solve(eps), np.float64))
    costs.append((p * c).sum())  # mean cost per pair (plan sums to 1)
  assert all(a >= b - 1e-4 for a, b in zip(costs, costs[1:])), costs
  assert costs[-1] - opt < 0.05 * opt, (costs, opt)


def test_default_relative_eps_high_dim():
  n, d = 256, 3072
  x0, x1 = _data(2, n, d)
  c = _np_cost(x0, x1)
  indep, opt = np.diag(c).mean(), _exact_mean(c)
  _, _, info = jax.jit(fm.couplings.make("sinkhorn"))(jax.random.PRNGKey(0), x0, x1)
  p = np.asarray(jnp.exp(fm.couplings.sinkhorn.solve(x0, x1)[0]), np.float64)
  closed = (indep - (p * c).sum()) / (indep - opt)
  assert closed >= 0.9, closed
  assert info["cost_after"] < info["cost_before"]
  assert bool(info["converged"])


def test_pairs_beat_independent():
  x0, x1 = _data(3, 128, 2)
  for couple in (fm.couplings.make("exact"), fm.couplings.make("sinkhorn")):
    _, _, info = couple(jax.random.PRNGKey(0), x0, x1)
    assert info["cost_after"] < 0.8 * info["cost_before"]


def test_no_nan_tiny_eps_and_huge_scale():
  couples = [jax.jit(fm.couplings.make("sinkhorn", epsilon=1e-4, max_iterations=50,
                                       replace=r)) for r in (False, True)]
  for scale in (1.0, 1e4):
    x0, x1 = _data(4, 64, 2, scale=scale)
    for couple in couples:
      i0, i1, info = couple(jax.random.PRNGKey(1), x0, x1)
      assert 0 <= int(i0.min()) and int(i0.max()) < 64 and 0 <= int(i1.min()) and int(i1.max()) < 64
      for v in info.values():
        assert np.all(np.isfinite(np.asarray(v, np.float64)))
      assert int(info["iterations"]) <= 50
      assert info["cost_after"] <= info["cost_before"]


def test_non_convergence_reported():
  x0, x1 = _data(7, 64, 2)
  couple = fm.couplings.make("sinkhorn", epsilon=1e-3, max_iterations=2)
  _, _, info = jax.jit(couple)(jax.random.PRNGKey(0), x0, x1)
  assert not bool(info["converged"])
  assert int(info["iterations"]) <= 2


def test_replace_joint_sampling():
  x0, x1 = _data(5, 32, 2)
  couple = jax.jit(fm.couplings.make("sinkhorn", epsilon=0.05, replace=True))   # jitted: one compile
  i0, i1, info = couple(jax.random.PRNGKey(0), x0, x1)
  x0p, x1p = fm.couplings.apply(i0, i1, x0, x1)
  assert x0p.shape == x0.shape and x1p.shape == x1.shape
  s0 = {tuple(v) for v in np.asarray(x0).tolist()}
  assert all(tuple(v) in s0 for v in np.asarray(x0p).tolist())
  assert info["cost_after"] < info["cost_before"]


def test_sb_epsilon():
  x0, x1 = _data(6, 32, 2)
  for sigma in (1.0, 0.3):
    _, _, info = fm.couplings.make("sb", sigma=sigma)(jax.random.PRNGKey(0), x0, x1)
    np.testing.assert_allclose(info["epsilon"], 2 * sigma ** 2, rtol=1e-6)
  _, _, info = fm.couplings.make("sb")(jax.random.PRNGKey(0), x0, x1)
  np.testing.assert_allclose(info["epsilon"], 2.0)
  p = fm.couplings.plan(x0, x1, method="sb", sigma=0.5)
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name,kw", [
    ("sb", {"sigma": 0.0}), ("sb", {"sigma": -1.0}), ("sb", {"sigma": 1e-30}), ("sb", {"sigma": 1e30}),
    ("sb", {"sigma": float("nan")}), ("sinkhorn", {"epsilon": 0.0}), ("sinkhorn", {"epsilon": -0.1}),
    ("sinkhorn", {"epsilon": float("inf")}), ("sinkhorn", {"relative": 0.0}),
    ("sinkhorn", {"threshold": 0.0}), ("sinkhorn", {"max_iterations": 0}),
])
def test_degenerate_epsilon_refused_at_make(name, kw):
  """epsilon = 0 (sigma = 0 for SB, or a sigma whose 2 sigma^2 under/overflows float32) makes the plan NaN."""
  with pytest.raises(ValueError) as e:
    fm.couplings.make(name, **kw)
  assert str(e.value).count(".") <= 3 and "\n" not in str(e.value)
  assert list(kw)[0] in str(e.value)


def test_sigma_zero_plan_would_be_nan():
  """What the refusal prevents: at epsilon = 0 the Sinkhorn plan is not a plan."""
  x0, x1 = _data(8, 16, 2)
  log_plan, _ = fm.couplings.sinkhorn.solve(x0, x1, epsilon=0.0)
  assert not np.isfinite(np.asarray(log_plan)).all()


def test_integral_float_max_iterations_from_config():
  """Config overrides of optional keys arrive as floats; 5.0 is an integer count."""
  assert fm.couplings.make("sinkhorn", max_iterations=5.0).max_iterations == 5
