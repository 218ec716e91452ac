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
