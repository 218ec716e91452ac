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


@functools.lru_cache(maxsize=None)
def _head_net(kind):
  """A conditional MLP with K classes and the model options of head `kind`, perturbed random parameters."""
  from fm import heads
  model = fm.models.make("mlp", width=16, depth=2, num_classes=K, **heads.MODEL_OPTIONS[kind])
  extra = {"t2": jnp.zeros(1)} if kind == "average_velocity" else {}
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(1), jnp.zeros((1, 2)), y=jnp.zeros(1, jnp.int32), **extra)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return model, jax.tree_util.tree_unflatten(tree, leaves)


def _raw(model, params, t, x, labels, t2=None):
  """The network's output by a plain `model.apply` on `[B]` inputs (no fm code between)."""
  extra = {} if t2 is None else {"t2": jnp.full((x.shape[0],), t2, x.dtype)}
  return model.apply(params, jnp.full((x.shape[0],), t, x.dtype), x, y=labels, **extra)


@pytest.mark.parametrize("s", [0.0, 1.0, 2.5])
def test_sde_and_meanflow_fields_guide_the_whole_output(s):
  """Flow and score of sf2m, MeanFlow's average velocity and a flow's SDE drift at guidance s equal the formula
  out(null) + s (out(y) - out(null)) of two separate plain network calls, pushed through the head's reading."""
  from fm import heads, paths, sf2m, stochastic
  x, y = _inputs((2,))
  null = guidance.null_labels(len(y), K)
  t = jnp.asarray(0.3)

  def formula(model, params, t2=None):
    out_y, out_null = _raw(model, params, t, x, y, t2), _raw(model, params, t, x, null, t2)
    assert np.abs(np.asarray(out_y - out_null)).max() > 1e-3   # the label matters: the check can fail
    return out_null + s * (out_y - out_null)

  model, params = _head_net("flow_score")
  head = heads.for_model(model)
  want_v, want_s = sf2m.split_flow_score(formula(model, params))
  got_v, got_s = head.flow_and_score(model, params, s, y=y)(t, x)
  np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(head.velocity(model, params, s, y=y)(t, x), want_v, rtol=1e-5, atol=1e-6)
  sde = head.sde(model, params, 0.7, paths.make("sb", sigma=0.5), s, y=y)
  np.testing.assert_allclose(sde.drift(t, x), want_v + 0.49 * want_s, rtol=1e-5, atol=1e-6)

  model, params = _head_net("average_velocity")
  head = heads.for_model(model)
  np.testing.assert_allclose(head.average_velocity(model, params, s, y=y)(t, x, 0.4), formula(model, params, 0.4),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(head.velocity(model, params, s, y=y)(t, x), formula(model, params, 0.0),
                             rtol=1e-5, atol=1e-6)

  model, params = _head_net("velocity")
  head, path = heads.for_model(model), paths.make("linear", sigma=0.1)
  v = formula(model, params)
  m, _ = stochastic.flow_noise_mean(path, t, x, v)
  np.testing.assert_allclose(head.sde(model, params, 1.5, path, s, y=y).drift(t, x), v - 0.5 * 1.5 ** 2 * m,
                             rtol=1e-5, atol=1e-5)


class _Counting:
  """A stand-in conditional network of head `kind` that records the batch of every call (at trace time)."""
  num_classes = K

  def __init__(self, kind):
    self.outputs, self.second_time = (2 if kind == "flow_score" else 1), kind == "average_velocity"
    self.batches = []

  def apply(self, params, t, x, y=None, t2=None):
    del params
    self.batches.append(x.shape[0])
    out = x * (1.0 + y[:, None].astype(x.dtype)) + t[:, None] + (0.0 if t2 is None else t2[:, None])
    return jnp.concatenate([out] * self.outputs, axis=-1)


@pytest.mark.parametrize("solver,kind", [("euler_maruyama", "flow_score"), ("stochastic_heun", "velocity"),
                                         pytest.param("euler_maruyama", "velocity", marks=pytest.mark.slow),
                                         ("meanflow", "average_velocity")])
def test_sde_and_meanflow_samplers_count_guided_calls(solver, kind):
  """NFE = the solver's own count of field calls (steps x stages); network passes = NFE at s in {0, 1}, else
  2 NFE; each call of the guided field is ONE network call, on 2B inputs for s not in {0, 1}."""
  from fm import paths
  x0, y = _inputs((2,), 8)
  path = paths.make("sb", sigma=0.5) if kind == "flow_score" else paths.make("linear", sigma=0.0)
  keys = sampling.noise_keys(jax.random.PRNGKey(3), 0, 8)
  stages = solvers.sde.STAGES.get(solver, 1)   # meanflow: one call of u per jump
  outs = {}
  for s in (1.0, 2.0, 0.0):
    net = _Counting(kind)
    x1, info = sampling.generate(net, None, x0, solver, steps=5, y=y, guidance=s, noise=1.0, path=path, keys=keys)
    assert int(info["nfe"]) == 5 * stages and int(info["steps"]) == 5
    assert int(info["network_passes"]) == (1 if s in (0.0, 1.0) else 2) * 5 * stages
    assert net.batches == [8 if s in (0.0, 1.0) else 16] * stages   # the scan body, traced once
    outs[s] = np.asarray(x1)
  assert np.abs(outs[1.0] - outs[2.0]).max() > 1e-3 and np.abs(outs[0.0] - outs[1.0]).max() > 1e-3


@pytest.mark.slow   # the fields are checked above, the CLI in tests/test_cli_sde.py
def test_real_network_sde_and_meanflow_sampling_with_guidance():
  """generate with a real conditional network: every sampler runs at guidance 2 and counts 2 passes per call."""
  from fm import paths
  x0, y = _inputs((2,), 8)
  keys = sampling.noise_keys(jax.random.PRNGKey(3), 0, 8)
  for solver, kind, path in (("euler_maruyama", "flow_score", paths.make("sb", sigma=0.5)),
                             ("stochastic_heun", "velocity", paths.make("linear", sigma=0.1)),
                             ("meanflow", "average_velocity", None)):
    model, params = _head_net(kind)
    x1, info = sampling.generate(model, params, x0, solver, steps=4, y=y, guidance=2.0, noise=1.0, path=path,
                                 keys=keys)
    assert np.isfinite(np.asarray(x1)).all()
    assert int(info["network_passes"]) == 2 * int(info["nfe"]) == 2 * 4 * solvers.sde.STAGES.get(solver, 1)


@pytest.mark.parametrize("kind", ["flow_score", "average_velocity"])
@pytest.mark.parametrize("s", [1.0, 2.0])
def test_ode_solvers_read_conditional_sf2m_and_meanflow_heads(kind, s):
  """One Euler step of a conditional sf2m / meanflow run is x0 + (guided flow half / guided u(x0, 0, h = 0)),
  from plain network calls (before, the ODE fed such runs the whole 2C output, or no second time)."""
  model, params = _head_net(kind)
  x0, y = _inputs((2,), 8)
  null = guidance.null_labels(len(y), K)
  t2 = 0.0 if kind == "average_velocity" else None
  out_y, out_null = _raw(model, params, 0.0, x0, y, t2), _raw(model, params, 0.0, x0, null, t2)
  v = (out_null + s * (out_y - out_null))[:, :2]   # the flow half of sf2m's [v, s_theta]; all of u
  x1, info = sampling.generate(model, params, x0, "euler", steps=1, y=y, guidance=s)
  np.testing.assert_allclose(x1, x0 + v, rtol=1e-5, atol=1e-6)
  assert int(info["nfe"]) == 1 and int(info["network_passes"]) == (1 if s == 1 else 2)
