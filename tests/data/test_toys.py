import jax
import numpy as np
import pytest

import fm
from fm.data import toys


@pytest.mark.parametrize("name", toys.NAMES)
def test_shapes_jit_and_determinism(name):
  f = jax.jit(lambda k: toys.sample(name, k, 500))
  x = np.asarray(f(jax.random.PRNGKey(0)))
  assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
  np.testing.assert_array_equal(x, np.asarray(f(jax.random.PRNGKey(0))))
  assert not np.array_equal(x, np.asarray(f(jax.random.PRNGKey(1))))
  assert 0.5 < x.std() < 5.0


def test_geometry_of_known_toys():
  x = np.asarray(toys.sample("8gaussians", jax.random.PRNGKey(0), 20000))
  r = np.linalg.norm(x, axis=1)
  assert abs(np.median(r) - 5.0) < 0.2
  angles = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
  counts = np.bincount(np.round(angles / (np.pi / 4)).astype(int) % 8, minlength=8)
  assert counts.min() > 0.1 * len(x)
  g = np.asarray(toys.sample("gaussian", jax.random.PRNGKey(0), 50000))
  np.testing.assert_allclose(np.cov(g.T), np.eye(2), atol=0.03)
  c = np.asarray(toys.sample("circles", jax.random.PRNGKey(0), 5000))
  radii = np.linalg.norm(c, axis=1)
  assert ((np.abs(radii - 2) < 0.4) | (np.abs(radii - 4) < 0.4)).mean() > 0.99


def test_parse_task():
  assert toys.parse_task("gaussian->8gaussians") == ("gaussian", "8gaussians")
  with pytest.raises(ValueError, match="valid toys: gaussian, 8gaussians"):
    toys.parse_task("gaussian->moon")
  with pytest.raises(ValueError, match="source->target"):
    toys.parse_task("gaussian")
  for task in toys.TASKS:
    toys.parse_task(task)
  assert fm.data.toys is toys


def test_log_prob_closed_forms():
  """Against scipy's normal densities in float64, and normalised on a grid."""
  from scipy import stats
  x = np.random.default_rng(0).normal(scale=4.0, size=(50, 2))
  np.testing.assert_allclose(toys.log_prob("gaussian", x.astype(np.float32)),
                             stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(x), rtol=1e-5)
  centres = [(5 * np.cos(k * np.pi / 4), 5 * np.sin(k * np.pi / 4)) for k in range(8)]
  dens = sum(stats.multivariate_normal(c, np.sqrt(0.1) * np.eye(2)).pdf(x) for c in centres) / 8
  got = np.asarray(toys.log_prob("8gaussians", x.astype(np.float32)))
  ok = dens > 1e-30
  np.testing.assert_allclose(got[ok], np.log(dens[ok]), rtol=1e-4)
  assert np.isfinite(got).all()   # log-sum-exp: finite far from every centre too
  g = np.linspace(-8, 8, 321)
  xx = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2).astype(np.float32)
  mass = np.exp(np.asarray(toys.log_prob("8gaussians", xx), np.float64)).sum() * (g[1] - g[0]) ** 2
  assert abs(mass - 1) < 1e-3
  # Samples sit where the density is: mean log density of samples ~ -entropy of the mixture.
  s = toys.sample("8gaussians", jax.random.PRNGKey(0), 4000)
  assert np.mean(np.asarray(toys.log_prob("8gaussians", s))) > np.mean(np.asarray(toys.log_prob("8gaussians", x)))
  with pytest.raises(ValueError, match="no closed-form density; toys with one: gaussian, 8gaussians"):
    toys.log_prob("moons", x)
