"""The CFM loss against independent computations of its value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import fm

RNG = np.random.default_rng(1)
X0 = jnp.asarray(RNG.standard_normal((64, 2)), jnp.float32)
X1 = jnp.asarray(RNG.standard_normal((64, 2)) * 0.5 + 3.0, jnp.float32)
ZERO = lambda params, t, x: jnp.zeros_like(x)


def test_rf_zero_net_loss_is_mean_squared_displacement():
  method = fm.methods.make("rf")
  loss, aux = method.loss(ZERO, None, jax.random.PRNGKey(0), X0, X1)
  np.testing.assert_allclose(loss, np.mean((np.asarray(X1) - np.asarray(X0)) ** 2), rtol=1e-6)
  assert set(aux) >= {"loss", "cost_before", "cost_after"}


def test_rf_perfect_net_has_zero_loss():
  perfect = lambda params, t, x: params
  loss, _ = fm.methods.make("rf").loss(perfect, X1 - X0, jax.random.PRNGKey(0), X0, X1)
  assert float(loss) == 0.0


def test_otcfm_zero_net_loss_equals_exact_ot_cost():
  """sigma = 0, v = 0: loss * d is the optimal assignment cost / n, from scipy."""
  loss, aux = fm.methods.make("otcfm", sigma=0.0).loss(ZERO, None, jax.random.PRNGKey(0), X0, X1)
  cost = ((np.asarray(X0)[:, None] - np.asarray(X1)[None]) ** 2).sum(-1)
  r, c = linear_sum_assignment(cost)
  np.testing.assert_allclose(float(loss) * 2, cost[r, c].mean(), rtol=1e-5)
  assert float(aux["cost_after"]) < float(aux["cost_before"])


def test_icfm_zero_net_loss_expectation():
  """E[(u_t)^2] with u_t = x1 - x0 for independent pairs, whatever sigma."""
  loss, _ = fm.methods.make("icfm", sigma=0.5).loss(ZERO, None, jax.random.PRNGKey(3), X0, X1)
  np.testing.assert_allclose(loss, np.mean((np.asarray(X1) - np.asarray(X0)) ** 2), rtol=1e-6)


def test_sbcfm_uses_two_sigma_squared():
  method = fm.methods.make("sbcfm", sigma=0.7)
  _, aux = method.loss(ZERO, None, jax.random.PRNGKey(0), X0, X1)
  np.testing.assert_allclose(aux["epsilon"], 2 * 0.7 ** 2, rtol=1e-6)
  assert method.path == fm.paths.make("sb", sigma=0.7)


def test_defaults_and_errors():
  assert fm.methods.make("icfm").path == fm.paths.make("linear", sigma=0.1)
  assert fm.methods.make("rf").path == fm.paths.make("linear", sigma=0.0)
  assert fm.methods.make("fm", sigma=0.01).path == fm.paths.make("lipman", sigma_min=0.01)
  assert fm.methods.make("vp").path == fm.paths.make("vp", sigma=0.1)
  with pytest.raises(ValueError, match="valid methods: icfm, rf, otcfm, sbcfm, fm, vp"):
    fm.methods.make("ot-cfm")
  with pytest.raises(ValueError, match="sigma = 0"):
    fm.methods.make("rf", sigma=0.1)


@pytest.mark.parametrize("name", fm.methods.NAMES)
def test_grad_jits_once_for_every_method(name):
  mean = name == "meanflow"   # its objective passes the second time t2: the network must take it
  model = fm.models.make("mlp", dim=2, width=16, depth=2, second_time=mean)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(4), jnp.zeros((4, 2)), **({"t2": jnp.zeros(4)} if mean else {}))
  method = fm.methods.make(name)

  traces = []

  @jax.jit
  def step(params, key, x0, x1):
    traces.append(1)
    return jax.grad(lambda p: method.loss(model.apply, p, key, x0, x1)[0])(params)

  for i in range(3):
    g = step(params, jax.random.PRNGKey(i), X0 + i, X1)
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(g))
  assert len(traces) == 1
