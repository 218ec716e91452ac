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


@pytest.mark.parametrize("name", toys.LABELLED)
def test_labels_come_with_the_same_points(name):
  key = jax.random.PRNGKey(3)
  x, y = toys.sample_labelled(name, key, 4000)
  np.testing.assert_array_equal(np.asarray(x), np.asarray(toys.sample(name, key, 4000)))
  y = np.asarray(y)
  k = len(toys.class_names(name))
  assert y.dtype == np.int32 and set(np.unique(y)) == set(range(k))
  assert np.all(np.abs(np.bincount(y) / len(y) - 1 / k) < 0.03)   # classes equally likely


def test_8gaussians_label_is_the_mode_counter_clockwise_from_angle_0():
  x, y = map(np.asarray, toys.sample_labelled("8gaussians", jax.random.PRNGKey(0), 5000))
  angle = np.mod(np.degrees(np.arctan2(x[:, 1], x[:, 0])), 360)
  nearest = np.round(angle / 45).astype(int) % 8
  assert (nearest == y).mean() > 0.995   # std 0.56 at radius 5: ~0.1% fall past the 22.5 deg boundary
  np.testing.assert_allclose(np.asarray(toys.mode_centres("8gaussians"))[2], [0.0, 5.0], atol=1e-6)


def test_moons_label_is_the_moon():
  """Moon 0 is the upper arc (centre of mass above), moon 1 the lower one, mirrored."""
  x, y = map(np.asarray, toys.sample_labelled("moons", jax.random.PRNGKey(0), 4000))
  upper, lower = x[y == 0], x[y == 1]
  assert upper[:, 1].mean() > lower[:, 1].mean() + 1.0
  # noise-free arcs: the upper moon is 3 (cos, sin) - 1 and the lower 3 (1 - cos, 0.5 - sin) - 1
  assert upper[:, 0].mean() < lower[:, 0].mean()


def test_unlabelled_target_refused_for_a_conditional_run():
  with pytest.raises(ValueError, match="toy 'scurve' has no class labels.*toys with labels: 8gaussians, moons"):
    toys.check_options("gaussian->scurve", num_classes=2)
  with pytest.raises(ValueError, match="set model.num_classes=2"):
    toys.check_options("gaussian->moons", num_classes=8)
  src = toys.make_source(16, "8gaussians->moons", num_classes=2)
  x0, x1, y1 = src.batch_fn(jax.random.PRNGKey(0), None)
  u0, u1 = toys.make_source(16, "8gaussians->moons").batch_fn(jax.random.PRNGKey(0), None)
  np.testing.assert_array_equal(x0, u0)
  np.testing.assert_array_equal(x1, u1)   # the labelled batch draws the same points
  assert src.labelled and y1.shape == (16,) and src.classes == ("upper moon", "lower moon")
