"""SDE solvers: weak convergence order on an OU process (closed-form moments), exact NFE, noise per step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm.solvers.sde import SDE_SOLVERS, STAGES, integrate_sde

# dx = a x dt + g dW, x0 ~ N(m0, s0^2): x1 ~ N(m0 e^a, s0^2 e^{2a} + g^2 (e^{2a} - 1) / (2a))
A, G, M0, S0 = -1.5, 1.0, 1.0, 0.5
MEAN1 = M0 * np.exp(A)
VAR1 = S0**2 * np.exp(2 * A) + G**2 * (np.exp(2 * A) - 1) / (2 * A)


@pytest.mark.parametrize("solver,order,steps", [("euler_maruyama", 1, [4, 8, 16]),
                                                ("stochastic_heun", 2, [2, 4, 8])])
def test_weak_order_on_ornstein_uhlenbeck(solver, order, steps):
  """|E x1 - mean| + |Var x1 - var| against 1/steps: slope = weak order (float64, 2^20 paths)."""
  with jax.enable_x64(True):
    x0 = M0 + S0 * jax.random.normal(jax.random.PRNGKey(1), (2**20, 1), jnp.float64)
    run = jax.jit(lambda x, n: integrate_sde(lambda t, y: A * y, G, x, jax.random.PRNGKey(0), solver,
                                             steps=n)[0], static_argnums=1)
    errs = []
    for n in steps:
      x = np.asarray(run(x0, n))
      errs.append(abs(x.mean() - MEAN1) + abs(x.var() - VAR1))
  slope = np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errs), 1)[0]
  assert abs(slope - order) < 0.3, (slope, errs)


@pytest.mark.parametrize("solver", SDE_SOLVERS)
def test_nfe_is_drift_calls(solver):
  calls = []

  def drift(t, x):
    calls.append(1)   # counted at trace time: one per drift call site in the step body
    return -x
  x1, info = integrate_sde(drift, 0.5, jnp.ones((3, 2)), jax.random.PRNGKey(0), solver, steps=7)
  assert int(info["nfe"]) == 7 * STAGES[solver] and len(calls) == STAGES[solver]
  assert x1.shape == (3, 2) and int(info["steps"]) == 7


def test_noise_is_fold_in_of_the_step_and_zero_diffusion_is_euler():
  """Step n adds g sqrt(h) normal(fold_in(key, n)); with g = 0 the scheme is the ODE's Euler."""
  key = jax.random.PRNGKey(3)
  x0 = jnp.zeros((4, 3))
  x1, _ = integrate_sde(lambda t, x: jnp.zeros_like(x), 2.0, x0, key, "euler_maruyama", steps=3)
  expected = sum(2.0 * np.sqrt(1 / 3) * np.asarray(jax.random.normal(jax.random.fold_in(key, n), (4, 3)))
                 for n in range(3))
  np.testing.assert_allclose(np.asarray(x1), expected, rtol=1e-5, atol=1e-6)
  from fm.solvers import integrate
  v = lambda t, x: jnp.sin(t) - x
  for solver, ode in (("euler_maruyama", "euler"), ("stochastic_heun", "heun")):
    xs, _ = integrate_sde(v, 0.0, jnp.ones((2, 2)), key, solver, steps=5)
    xo, _ = integrate(v, jnp.ones((2, 2)), ode, steps=5)
    np.testing.assert_allclose(np.asarray(xs), np.asarray(xo), rtol=1e-6)


def test_per_sample_keys_make_samples_independent_of_the_batch():
  """With one key per sample, sample i is the same whether it is drawn alone or in a batch."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(6))
  x0 = jnp.arange(12.0).reshape(6, 2)
  run = lambda x, k: integrate_sde(lambda t, y: -y, lambda t: 1.0 + t, x, k, "stochastic_heun", steps=4)[0]
  full = np.asarray(run(x0, keys))
  parts = np.concatenate([np.asarray(run(x0[:2], keys[:2])), np.asarray(run(x0[2:], keys[2:]))])
  np.testing.assert_allclose(full, parts, rtol=1e-6)
  assert not np.allclose(full, np.asarray(run(x0, jax.random.PRNGKey(0))))
  with pytest.raises(ValueError, match="per-sample keys must number the batch 6, got 2"):
    run(x0, keys[:2])


def test_trajectory_and_bad_input():
  x1, info = integrate_sde(lambda t, x: x, lambda t: t, jnp.ones((2, 1)), jax.random.PRNGKey(0),
                           steps=4, save_trajectory=True)
  assert info["trajectory"].shape == (5, 2, 1)
  np.testing.assert_allclose(np.asarray(info["trajectory"][-1]), np.asarray(x1))
  np.testing.assert_allclose(np.asarray(info["ts"]), np.linspace(0, 1, 5), atol=1e-7)
  with pytest.raises(ValueError, match="unknown SDE solver 'rk4'; valid choices: euler_maruyama"):
    integrate_sde(lambda t, x: x, 1.0, jnp.ones((2, 1)), jax.random.PRNGKey(0), "rk4", steps=4)
  with pytest.raises(ValueError, match="steps must be a positive int"):
    integrate_sde(lambda t, x: x, 1.0, jnp.ones((2, 1)), jax.random.PRNGKey(0), steps=0)
  with pytest.raises(ValueError, match="need t1 > t0"):
    integrate_sde(lambda t, x: x, 1.0, jnp.ones((2, 1)), jax.random.PRNGKey(0), steps=2, t0=1.0, t1=0.0)
