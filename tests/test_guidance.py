"""Classifier-free guidance (fm.guidance): exact endpoints, the formula, NFE and network passes, label dropout."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
import fm.recipe
from fm import guidance, solvers
from fm.evaluate import sampling

K = 4


@functools.lru_cache(maxsize=None)
def _net(name):
  """A conditional model with K classes and random (non-trivial) parameters."""
  if name == "mlp":
    model, x = fm.models.make("mlp", width=16, depth=2, num_classes=K), jnp.zeros((1, 2))
  elif name == "unet":
    model = fm.models.make("unet", num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                           attention_resolutions="4", num_classes=K)
    x = jnp.zeros((1, 8, 8, 3))
  else:
    model = fm.models.make("dit", depth=1, hidden_size=32, num_heads=4, patch_size=2, num_classes=K)
    x = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(1), x, y=jnp.zeros(1, jnp.int32))
  # Perturb every parameter so that no output is zero by initialisation (e.g. zero-init output layers).
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return model, jax.tree_util.tree_unflatten(tree, leaves), x.shape[1:]


def _inputs(shape, n=6):
  x = jax.random.normal(jax.random.PRNGKey(2), (n, *shape))
  y = jnp.arange(n, dtype=jnp.int32) % K
  return x, y


@pytest.mark.parametrize("name", ["mlp", pytest.param("unet", marks=pytest.mark.slow),
                                  pytest.param("dit", marks=pytest.mark.slow)])
def test_guidance_zero_and_one_are_the_unconditional_and_conditional_fields_exactly(name):
  model, params, shape = _net(name)
  x, y = _inputs(shape)
  t = jnp.asarray(0.3, x.dtype)
  # The plain conditional field (as training and every other caller evaluate it), for labels y and null.
  apply = jax.jit(lambda x, y: fm.recipe.velocity(model, params, y=y)(t, x))
  v_cond = np.asarray(apply(x, y))
  v_null = np.asarray(jax.jit(lambda x: fm.recipe.velocity(model, params, y=guidance.null_labels(len(x), K))(t, x))(x))
  assert np.abs(v_cond - v_null).max() > 1e-3   # the label matters, so the checks below can fail
  for s, want in ((0.0, v_null), (1.0, v_cond)):
    got = np.asarray(jax.jit(lambda x, y, s=s: guidance.velocity(model, params, y, s)(t, x))(x, y))
    np.testing.assert_array_equal(got, want)


def test_guided_field_is_the_formula_of_the_two_fields():
  model, params, shape = _net("mlp")
  x, y = _inputs(shape)
  t = jnp.asarray(0.7)
  v_cond = guidance.velocity(model, params, y, 1.0)(t, x)
  v_null = guidance.velocity(model, params, y, 0.0)(t, x)
  for s in (-0.5, 1.5, 3.0):
    got = guidance.velocity(model, params, y, s)(t, x)
    np.testing.assert_allclose(got, v_null + s * (v_cond - v_null), rtol=1e-5, atol=1e-5)


def test_guided_field_is_one_batched_network_call():
  calls = []

  def apply(t, x, y):
    calls.append((x.shape, y.shape))
    return x * (1.0 + y[:, None].astype(x.dtype))
  x, y = jnp.ones((3, 2)), jnp.array([0, 1, 2], jnp.int32)
  v = guidance.guided(apply, y, 2.0, num_classes=5)(0.0, x)
  assert calls == [((6, 2), (6,))]
  # v(y) = x (1 + y), v(null) = x (1 + 5): v_2 = 6 + 2 (1 + y - 6)
  np.testing.assert_allclose(v[:, 0], 6 + 2 * (1 + np.arange(3) - 6))
  for s, labels in ((1.0, [0, 1, 2]), (0.0, [5, 5, 5])):   # the ends: one pass on B inputs
    calls.clear()
    v = guidance.guided(apply, y, s, num_classes=5)(0.0, x)
    assert calls == [((3, 2), (3,))]
    np.testing.assert_array_equal(v[:, 0], 1.0 + np.asarray(labels))


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_every_solver_integrates_the_guided_field_and_counts_it(solver):
  model, params, shape = _net("mlp")
  x0, y = _inputs(shape, 8)
  steps = None if solver in solvers.ADAPTIVE else 5
  outs = {}
  for s in (1.0, 2.0):
    x1, info = sampling.generate(model, params, x0, solver, rtol=1e-4, atol=1e-4, steps=steps, y=y, guidance=s)
    assert np.isfinite(np.asarray(x1)).all() and bool(info["success"])
    assert int(info["network_passes"]) == (1 if s == 1 else 2) * int(info["nfe"])
    assert guidance.network_passes(7, 0.0) == 7
    if steps is not None:   # nfe: evaluations of the guided field, as the solver sees it
      assert int(info["nfe"]) == steps * solvers.tableau.TABLEAUX[solver].stages
    outs[s] = np.asarray(x1)
  assert np.abs(outs[1.0] - outs[2.0]).max() > 1e-3


def test_drop_labels_rate_and_identity():
  y = jnp.zeros((20000,), jnp.int32)
  dropped = np.asarray(guidance.drop_labels(jax.random.PRNGKey(0), y, 7, 0.1))
  assert set(np.unique(dropped)) == {0, 7}
  frac = (dropped == 7).mean()
  assert abs(frac - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(y))   # 4 standard errors
  np.testing.assert_array_equal(guidance.drop_labels(jax.random.PRNGKey(0), y + 3, 7, 0.0), y + 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=0, drop_prob=0.1), "are for conditional runs"),
    (dict(num_classes=0, guidance=2.0), "are for conditional runs"),
    (dict(num_classes=3, drop_prob=1.0), r"must lie in \[0, 1\)"),
    (dict(num_classes=3, guidance=2.0), "needs the null class trained"),
    (dict(num_classes=3, drop_prob=0.1, guidance=float("inf")), "finite"),
])
def test_check_refuses_settings_that_do_not_fit(kwargs, match):
  with pytest.raises(ValueError, match=match):
    guidance.check(**kwargs)
  guidance.check(3, 0.1, 2.0)
  guidance.check(0)
