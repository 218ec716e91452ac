"""Marginal-preserving SDEs: the score from a velocity (Tweedie) and N(0, I) -> N(mu, Sigma) moments at t = 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import paths, stochastic
from fm.solvers.sde import integrate_sde

MU = np.array([1.5, -0.5])
SIGMA = np.array([[0.6, 0.25], [0.25, 0.3]])


def _linear_moments(t, sigma, xp=np):
  """x_t = t x1 + (1-t) x0 + sigma eps, x0 ~ N(0, I), x1 ~ N(MU, SIGMA): mean, cov, Cov(u, x_t), s^2."""
  s2 = (1 - t) ** 2 + sigma**2
  cov = t**2 * xp.asarray(SIGMA) + s2 * xp.eye(2)
  k = t * xp.asarray(SIGMA) - (1 - t) * xp.eye(2)           # Cov(x1 - x0, x_t)
  return t * xp.asarray(MU), cov, k, s2


def _analytic_velocity(sigma):
  """The marginal velocity E[x1 - x0 | x_t = x] of the linear path, in closed form."""
  def v(t, x):
    mean, cov, k, _ = _linear_moments(jnp.asarray(t, x.dtype), sigma, jnp)
    return jnp.asarray(MU, x.dtype) + (x - mean) @ (k @ jnp.linalg.inv(cov)).T
  return v


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_noise_mean_from_velocity_is_tweedie(sigma):
  """m = E[n | x] from the velocity equals (s^2) Cov(x)^-1 (x - mean) computed directly (float64)."""
  with jax.enable_x64(True):
    path = paths.make("linear", sigma=sigma)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
    for t in (0.0, 0.3, 0.8, 0.99):
      mean, cov, _, s2 = _linear_moments(t, sigma)
      m, s2_fm = stochastic.flow_noise_mean(path, jnp.asarray(t), x, _analytic_velocity(sigma)(t, x))
      expected = s2 * (np.asarray(x) - mean) @ np.linalg.inv(cov).T
      np.testing.assert_allclose(np.asarray(m), expected, rtol=1e-9, atol=1e-12)
      assert abs(float(s2_fm) - s2) < 1e-12


@pytest.mark.parametrize("name,kwargs,alpha,beta,std", [
    ("linear", {"sigma": 0.2}, lambda t: t, lambda t: 1 - t, lambda t: 0.2),
    ("vp", {"sigma": 0.1}, lambda t: np.sin(np.pi * t / 2), lambda t: np.cos(np.pi * t / 2), lambda t: 0.1),
    ("lipman", {"sigma_min": 0.01}, lambda t: t, lambda t: 1 - 0.99 * t, lambda t: 0.0),
    ("sb", {"sigma": 1.0}, lambda t: t, lambda t: 1 - t, lambda t: np.sqrt(t * (1 - t))),
])
def test_path_coefficients(name, kwargs, alpha, beta, std):
  with jax.enable_x64(True):
    path, t, h = paths.make(name, **kwargs), 0.37, 1e-6
    (a, b, s), (da, db, ds) = stochastic.gaussian_path_coefficients(path, jnp.asarray(t))
    for got, f, dgot in ((a, alpha, da), (b, beta, db), (s, std, ds)):
      assert abs(float(got) - f(t)) < 1e-12
      assert abs(float(dgot) - (f(t + h) - f(t - h)) / (2 * h)) < 1e-6


@pytest.mark.parametrize("sigma,solver,steps", [(0.0, "euler_maruyama", 200), (0.5, "stochastic_heun", 50)])
def test_flow_sde_keeps_the_marginals(sigma, solver, steps):
  """The SDE built from the analytic flow ends at N(MU, SIGMA + sigma^2 I): mean and covariance within MC error."""
  n = 50_000
  path = paths.make("linear", sigma=sigma)
  sde = stochastic.flow_sde(_analytic_velocity(sigma), path, noise=1.5)
  x0 = jnp.sqrt(1 + sigma**2) * jax.random.normal(jax.random.PRNGKey(0), (n, 2))
  x1, info = jax.jit(lambda x: integrate_sde(sde.drift, sde.diffusion, x, jax.random.PRNGKey(1), solver,
                                             steps=steps))(x0)
  x1 = np.asarray(x1, np.float64)
  assert int(info["nfe"]) == steps * (1 if solver == "euler_maruyama" else 2)
  se = np.sqrt(np.diag(SIGMA).max() / n)       # ~3.5e-3: MC standard error of the mean
  np.testing.assert_allclose(x1.mean(0), MU, atol=6 * se + 0.01)
  np.testing.assert_allclose(np.cov(x1.T), SIGMA + sigma**2 * np.eye(2), atol=0.02)
  # the noise is real: the same start with noise 0 gives different end points
  ode = stochastic.flow_sde(_analytic_velocity(sigma), path, noise=0.0)
  x1_ode, _ = integrate_sde(ode.drift, ode.diffusion, x0[:100], jax.random.PRNGKey(1), solver, steps=steps)
  assert np.abs(np.asarray(x1_ode) - x1[:100]).mean() > 0.1


def test_sf2m_sde_drift():
  """drift = v + noise^2 s_theta and g = noise * sigma (TorchCFM's SDE at noise = 1)."""
  sde = stochastic.sf2m_sde(lambda t, x: (2 * x, x + t), sigma=0.7, noise=2.0)
  x = jnp.ones((3, 2))
  np.testing.assert_allclose(np.asarray(sde.drift(0.5, x)), 2 + 4 * 1.5)
  assert abs(float(sde.diffusion(jnp.asarray(0.3))) - 1.4) < 1e-6
