"""Paths against closed forms computed independently in numpy, and d/dt x_t = u_t via jax.jvp."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm import paths, timesteps

RNG = np.random.default_rng(0)
B, D = 16, 3
X0 = RNG.standard_normal((B, D)).astype(np.float32)
X1 = RNG.standard_normal((B, D)).astype(np.float32) + 2.0
EPS = RNG.standard_normal((B, D)).astype(np.float32)
T = RNG.uniform(0.01, 0.99, B).astype(np.float32)


def closed_form(name, s, x0, x1, t, eps):
  """Independent float64 numpy transcription of the formulas in the issue."""
  x0, x1, eps = (np.asarray(a, np.float64) for a in (x0, x1, eps))
  t = np.asarray(t, np.float64)[:, None]
  if name == "linear":
    mu = (1 - t) * x0 + t * x1
    x_t = mu + s * eps
    return x_t, x1 - x0
  if name == "sb":
    mu = (1 - t) * x0 + t * x1
    x_t = mu + s * np.sqrt(t * (1 - t)) * eps
    return x_t, (1 - 2 * t) / (2 * t * (1 - t)) * (x_t - mu) + (x1 - x0)
  if name == "vp":
    x_t = np.cos(np.pi * t / 2) * x0 + np.sin(np.pi * t / 2) * x1 + s * eps
    return x_t, np.pi / 2 * (np.cos(np.pi * t / 2) * x1 - np.sin(np.pi * t / 2) * x0)
  if name == "lipman":
    return t * x1 + (1 - (1 - s) * t) * x0, x1 - (1 - s) * x0
  raise AssertionError(name)


def make(name, s):
  return paths.make(name, **({"sigma_min": s} if name == "lipman" else {"sigma": s}))


@pytest.mark.parametrize("name", paths.NAMES)
@pytest.mark.parametrize("s", [0.0, 0.3])
def test_closed_form(name, s):
  x_t, u_t = make(name, s).interpolate(X0, X1, T, EPS)
  ref_x, ref_u = closed_form(name, s, X0, X1, T, EPS)
  np.testing.assert_allclose(x_t, ref_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(u_t, ref_u, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", paths.NAMES)
@pytest.mark.parametrize("s", [0.0, 0.3])
def test_time_derivative_is_velocity(name, s):
  """d/dt x_t (eps fixed) equals u_t; for sigma > 0 this checks the sigma_t' terms too."""
  path = make(name, s)
  for t in (0.1, 0.5, 0.77):
    tt = jnp.full((B,), t)
    x_of_t = lambda tt: path.interpolate(X0, X1, tt, EPS)[0]
    _, dx_dt = jax.jvp(x_of_t, (tt,), (jnp.ones_like(tt),))
    np.testing.assert_allclose(dx_dt, path.interpolate(X0, X1, tt, EPS)[1], rtol=1e-4, atol=1e-4)


def test_sb_finite_at_endpoints():
  path = paths.make("sb", sigma=1.0)
  t = jnp.array([0.0, 1.0] * (B // 2))
  x_t, u_t = path.interpolate(X0, X1, t, EPS)
  assert np.isfinite(np.asarray(u_t)).all()
  np.testing.assert_allclose(x_t[0], X0[0], atol=1e-6)
  np.testing.assert_allclose(x_t[1], X1[1], atol=1e-6)
  np.testing.assert_allclose(u_t, X1 - X0, atol=1e-6)
  # gradients w.r.t. the data (what training differentiates) stay finite at the endpoints
  grad = jax.grad(lambda x1: jnp.sum(path.interpolate(X0, x1, t, EPS)[1] ** 2))(jnp.asarray(X1))
  assert np.isfinite(np.asarray(grad)).all()


def test_endpoints_and_images():
  x0 = jnp.asarray(RNG.standard_normal((4, 3, 8, 8)), jnp.float32)
  x1 = jnp.asarray(RNG.standard_normal((4, 3, 8, 8)), jnp.float32)
  for name in ("linear", "vp", "lipman"):
    path = make(name, 0.0)
    x_t0, _ = path.interpolate(x0, x1, jnp.zeros(4), jnp.zeros_like(x0))
    x_t1, _ = path.interpolate(x0, x1, jnp.ones(4), jnp.zeros_like(x0))
    np.testing.assert_allclose(x_t0, x0, atol=1e-6)
    np.testing.assert_allclose(x_t1, x1, atol=1e-6)
    assert path.interpolate(x0, x1, 0.3, x0)[0].shape == x0.shape   # scalar t


def test_bad_arguments():
  with pytest.raises(ValueError, match="valid paths: linear, sb, vp, lipman"):
    paths.make("straight")
  with pytest.raises(ValueError, match="sigma_min"):
    paths.make("lipman", sigma=0.1)
  with pytest.raises(ValueError, match="finite number"):
    paths.make("linear", sigma=-1.0)
  with pytest.raises(ValueError, match="finite number"):
    paths.make("linear", sigma=math.nan)


def test_logit_normal_matches_normal_quantiles():
  from scipy import stats
  m, s = 0.5, 1.3
  t = np.asarray(timesteps.make("logit_normal", m=m, s=s)(jax.random.PRNGKey(0), 200_000))
  z = np.log(t) - np.log1p(-t)
  qs = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
  np.testing.assert_allclose(np.quantile(z, qs), stats.norm.ppf(qs, m, s), atol=0.02)
  u = np.asarray(timesteps.make("uniform")(jax.random.PRNGKey(1), 200_000))
  np.testing.assert_allclose(np.quantile(u, qs), qs, atol=0.01)
  with pytest.raises(ValueError, match="valid time samplers"):
    timesteps.make("beta")


def test_package_exposes_paths():
  assert fm.paths.make("linear", sigma=0.1) == paths.Linear(0.1)
