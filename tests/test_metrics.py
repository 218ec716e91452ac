import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

import fm


def test_w2_equals_scipy_assignment():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 2))
  y = rng.standard_normal((200, 2)) + 1.0
  cost = ((x[:, None] - y[None]) ** 2).sum(-1)
  r, c = linear_sum_assignment(cost)
  np.testing.assert_allclose(fm.metrics.w2(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
                             np.sqrt(cost[r, c].mean()), rtol=1e-4)


def test_w2_of_a_translation_is_the_shift():
  x = fm.data.toys.sample("moons", jax.random.PRNGKey(0), 128)
  np.testing.assert_allclose(fm.metrics.w2(x, x + jnp.array([3.0, 4.0])), 5.0, rtol=1e-4)
  np.testing.assert_allclose(fm.metrics.w2(x, x), 0.0, atol=1e-3)


def test_path_energy_of_straight_constant_speed_paths():
  rng = np.random.default_rng(1)
  x0, x1 = rng.standard_normal((2, 50, 2))
  ts = np.linspace(0, 1, 11)
  traj = (1 - ts)[:, None, None] * x0 + ts[:, None, None] * x1
  pe = fm.metrics.path_energy(jnp.asarray(traj), jnp.asarray(ts))
  np.testing.assert_allclose(pe, ((x1 - x0) ** 2).sum(-1).mean(), rtol=1e-5)
  # a detour (non-constant speed on the same segment) costs more energy
  ts2 = ts ** 2
  traj2 = (1 - ts2)[:, None, None] * x0 + ts2[:, None, None] * x1
  assert fm.metrics.path_energy(jnp.asarray(traj2), jnp.asarray(ts)) > pe
  assert float(fm.metrics.normalized_path_energy(pe, pe)) == 0.0
