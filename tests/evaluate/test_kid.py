"""KID: the unbiased MMD^2 against a brute-force double loop and against its Gaussian closed form."""
from __future__ import annotations

import numpy as np
import pytest

from fm.evaluate import kid


def brute_mmd2(x, y):
  """The estimator's definition, term by term in float64 (Python loops)."""
  def k(a, b):
    return (float(np.dot(a, b)) / len(a) + 1.0) ** 3
  m, n = len(x), len(y)
  sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return sxx + syy - 2 * sxy


def test_mmd2_matches_brute_force():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(7, 5))
  assert kid.mmd2_unbiased(x, y) == pytest.approx(brute_mmd2(x.astype(np.float64), y.astype(np.float64)),
                                                  rel=1e-12)
  # float32 features are promoted: the same value as their float64 copy.
  assert kid.mmd2_unbiased(x.astype(np.float32), y) == pytest.approx(
      brute_mmd2(x.astype(np.float32).astype(np.float64), y), rel=1e-12)


def test_mmd2_closed_form_gaussians():
  """x ~ N(0, a^2 I_d), y ~ N(0, b^2 I_d): E k(x, y) = 1 + 3 a^2 b^2 / d (odd moments vanish),
  so MMD^2 = 3 (a^2 - b^2)^2 / d; the estimator is unbiased, so its mean over draws converges to it."""
  d, a, b, m, reps = 4, 1.0, 1.5, 400, 40
  rng = np.random.default_rng(1)
  vals = [kid.mmd2_unbiased(rng.normal(0, a, (m, d)), rng.normal(0, b, (m, d))) for _ in range(reps)]
  want = 3 * (a ** 2 - b ** 2) ** 2 / d
  sem = np.std(vals, ddof=1) / np.sqrt(reps)
  assert abs(np.mean(vals) - want) < 4 * sem and sem < 0.05 * want
  # Same distribution: zero in expectation (and negative values are possible: no clipping).
  same = [kid.mmd2_unbiased(rng.normal(0, a, (m, d)), rng.normal(0, a, (m, d))) for _ in range(reps)]
  assert abs(np.mean(same)) < 4 * np.std(same, ddof=1) / np.sqrt(reps) and min(same) < 0


def test_kid_subsets():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 1, size=(20, 3))
  r = kid.kid(x, y, num_subsets=5, subset_size=8, seed=3)
  assert r["subset_size"] == 8 and r["num_subsets"] == 5
  g = np.random.default_rng(3)
  vals = [brute_mmd2(x[g.choice(30, 8, replace=False)], y[g.choice(20, 8, replace=False)]) for _ in range(5)]
  assert r["mean"] == pytest.approx(np.mean(vals), rel=1e-12) and r["std"] == pytest.approx(np.std(vals), rel=1e-9)
  assert kid.kid(x, y, subset_size=1000)["subset_size"] == 20   # capped by the smaller set
  with pytest.raises(ValueError, match="at least 2"):
    kid.kid(x[:1], y)
  with pytest.raises(ValueError, match="num_subsets"):
    kid.kid(x, y, num_subsets=0)
