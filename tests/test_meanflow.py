"""MeanFlow: the jvp target against finite differences and closed forms, the loss against numpy, the sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm import meanflow, paths
from fm.solvers import integrate_average


def _mlp():
  model = fm.models.make("mlp", dim=3, width=16, depth=2, activation="tanh", second_time=True)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(4), jnp.zeros((4, 3)), t2=jnp.zeros(4))
  return model, params


def test_jvp_total_derivative_matches_finite_difference():
  """d/dt u(z + s v, t + s, r) at s = 0: float32 jvp against a float64 central difference."""
  model, params = _mlp()
  rng = np.random.default_rng(0)
  z, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  t, r = np.array([0.1, 0.3, 0.5, 0.7]), np.array([0.4, 0.3, 0.9, 1.0])

  def u_fn(z, t, r):
    return model.apply(params, t, z, t2=r - t)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  u, target = meanflow.average_velocity_target(u_fn, f32(z), f32(t), f32(r), f32(v))
  _, dudt = jax.jvp(u_fn, (f32(z), f32(t), f32(r)), (f32(v), jnp.ones(4), jnp.zeros(4)))
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    apply64 = jax.jit(lambda t_, x_, t2_: model.apply(p64, t_, x_, t2=t2_))
    g = lambda s: np.asarray(apply64(jnp.asarray(t + s), jnp.asarray(z + s * v), jnp.asarray(r - t - s)))
    h = 1e-5
    fd = (g(h) - g(-h)) / (2 * h)
  np.testing.assert_allclose(np.asarray(dudt), fd, rtol=1e-4, atol=1e-5)
  # the target is v - (t - r) du/dt; rows with r = t get exactly v
  np.testing.assert_allclose(np.asarray(target), v - (t - r)[:, None] * fd, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(target)[1], v[1].astype(np.float32))


@pytest.mark.parametrize("flow", ["linear_field", "time_translation"])
def test_target_equals_the_true_average_velocity(flow):
  """For flows with closed-form average velocity u, the MeanFlow target built from u is u itself."""
  a, b = -0.8, np.array([1.0, -2.0])
  with jax.enable_x64(True):
    if flow == "linear_field":          # dz/dt = a z: z_r = z_t e^{a (r - t)}
      v_fn = lambda z, t: a * z
      u_fn = lambda z, t, r: z * jnp.expm1(a * (r - t))[:, None] / (r - t)[:, None]
    else:                                # dz/dt = b t: z_r = z_t + b (r^2 - t^2) / 2
      v_fn = lambda z, t: jnp.asarray(b) * t[:, None] + 0 * z
      u_fn = lambda z, t, r: jnp.asarray(b) * ((r + t) / 2)[:, None] + 0 * z
    z = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)))
    t, r = jnp.asarray([0.0, 0.2, 0.4, 0.5, 0.1]), jnp.asarray([1.0, 0.9, 0.6, 0.8, 0.3])
    u, target = meanflow.average_velocity_target(u_fn, z, t, r, v_fn(z, t))
    np.testing.assert_allclose(np.asarray(target), np.asarray(u), rtol=1e-12, atol=1e-12)
    # and one MeanFlow step with this u is exact: z_1 = z_0 e^a (resp. z_0 + b / 2)
    x1, info = integrate_average(lambda t, x, h: u_fn(x, jnp.full(5, t), jnp.full(5, t + h)), z, steps=1)
    exact = z * np.exp(a) if flow == "linear_field" else z + b / 2
    np.testing.assert_allclose(np.asarray(x1), np.asarray(exact), rtol=1e-12)
    assert int(info["nfe"]) == 1
    x1, info = integrate_average(lambda t, x, h: u_fn(x, jnp.full(5, t), jnp.full(5, t + h)), z, steps=3)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(exact), rtol=1e-12)
    assert int(info["nfe"]) == 3


@pytest.mark.parametrize("p", [0.0, 0.75])
def test_loss_against_numpy(p):
  """The loss recomputed in float64 numpy with a finite-difference total derivative."""
  model, params = _mlp()
  path = paths.make("linear", sigma=0.0)
  times = meanflow.TimePairSampler(m=-0.4, s=1.0, equal_fraction=0.25)
  loss_fn = meanflow.MeanFlowLoss(path, times, p=p, c=1e-3)
  rng = np.random.default_rng(2)
  x0, x1 = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
  key = jax.random.PRNGKey(5)
  apply = lambda q, t, x, t2: model.apply(q, t, x, t2=t2)
  # jitted throughout: one compile each instead of an op-by-op dispatch of every primitive
  loss_and_aux = jax.jit(lambda p_: loss_fn(apply, p_, key, jnp.asarray(x0), jnp.asarray(x1)))
  loss, aux = loss_and_aux(params)
  k_t, k_eps = jax.random.split(key)
  t, r = (np.asarray(a, np.float64) for a in times(k_t, 8))
  assert np.all(t <= r) and np.sum(t == r) == 2
  eps = np.asarray(jax.random.normal(k_eps, (8, 3)))
  del eps                                            # sigma = 0: the path has no noise
  z, v = (1 - t)[:, None] * x0 + t[:, None] * x1, x1 - x0
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    apply64 = jax.jit(lambda t_, x_, t2_: model.apply(p64, t_, x_, t2=t2_))
    g = lambda s: np.asarray(apply64(jnp.asarray(t + s), jnp.asarray(z + s * v), jnp.asarray(r - t - s)))
    u, h = g(0.0), 1e-5
    dudt = (g(h) - g(-h)) / (2 * h)
  err = np.sum((u - (v - (t - r)[:, None] * dudt)) ** 2, axis=1)
  expected = np.mean(err / (err + 1e-3) ** p)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-4)
  np.testing.assert_allclose(float(aux["mse"]), err.mean() / 3, rtol=2e-4)
  # gradients flow through u only (the target is stop-gradient): the loss is differentiable and finite
  grads = jax.jit(jax.grad(lambda p_: loss_and_aux(p_)[0]))(params)
  assert all(np.isfinite(np.asarray(g_)).all() for g_ in jax.tree_util.tree_leaves(grads))


def test_time_pair_sampler_distribution():
  """Unsorted draws are logit-normal(m, s) in the paper's time 1 - t; a fixed count has r = t."""
  times = meanflow.TimePairSampler(m=-2.0, s=2.0, equal_fraction=0.0)
  t, r = (np.asarray(a, np.float64) for a in times(jax.random.PRNGKey(0), 200_000))
  assert np.all((0 < t) & (t <= r) & (r < 1))
  logits = np.log((1 - np.concatenate([t, r])) / np.concatenate([t, r]))
  assert abs(logits.mean() + 2.0) < 0.02 and abs(logits.std() - 2.0) < 0.02
  t, r = meanflow.TimePairSampler(equal_fraction=0.75)(jax.random.PRNGKey(1), 10)
  assert int(np.sum(np.asarray(t) == np.asarray(r))) == 8    # round(7.5) rows have r = t
  with pytest.raises(ValueError, match="equal_fraction must lie in"):
    meanflow.TimePairSampler(equal_fraction=1.5)
  with pytest.raises(ValueError, match="p must be a finite number >= 0"):
    meanflow.MeanFlowLoss(paths.make("linear"), times, p=-1.0)


MODELS = [
    ("mlp", {"width": 8, "depth": 1}, (2, 3)),
    pytest.param("unet", {"num_channels": 32, "num_res_blocks": 1, "channel_mult": (1,), "attention_resolutions": "1"},
                 (2, 8, 8, 3), marks=pytest.mark.slow),
    pytest.param("dit", {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 4}, (2, 8, 8, 3),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,kwargs,shape", [getattr(m, "values", m) for m in MODELS])
def test_second_time_adds_only_its_embedding(name, kwargs, shape):
  """Parameter names (shapes only, no compile): TorchCFM's UNet names are kept, only t2's embedding is new."""
  x, t = jnp.zeros(shape), jnp.zeros(shape[:1])
  p_plain = jax.eval_shape(fm.models.make(name, **kwargs).init, jax.random.PRNGKey(0), t, x)
  model = fm.models.make(name, second_time=True, outputs=2, **kwargs)
  params = jax.eval_shape(lambda k: model.init(k, t, x, t2=t), jax.random.PRNGKey(0))
  new = {"/".join(k) for k in _paths(params)} - {"/".join(k) for k in _paths(p_plain)}
  # only the second time embedding is new: every other parameter keeps its (TorchCFM) name
  expected_new = {"mlp": set(), "unet": {"params/time_embed_r_0/kernel", "params/time_embed_r_0/bias",
                                         "params/time_embed_r_2/kernel", "params/time_embed_r_2/bias"},
                  "dit": {"params/r_embedder_mlp_0/kernel", "params/r_embedder_mlp_0/bias",
                          "params/r_embedder_mlp_2/kernel", "params/r_embedder_mlp_2/bias"}}[name]
  assert new == expected_new


@pytest.mark.parametrize("name,kwargs,shape", MODELS)
def test_models_take_a_second_time_and_several_outputs(name, kwargs, shape):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  t = jnp.asarray([0.2, 0.7])
  plain = fm.models.make(name, **kwargs)
  p_plain = plain.init(jax.random.PRNGKey(0), t, x)
  model = fm.models.make(name, second_time=True, outputs=2, **kwargs)
  params = model.init(jax.random.PRNGKey(0), t, x, t2=t)
  if name != "mlp":     # the UNet and DiT outputs start at zero: perturb to see the inputs act
    params = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.sign(jnp.sin(jnp.arange(a.size) + 1.0)).reshape(a.shape), params)
  out = model.apply(params, t, x, t2=jnp.asarray([0.1, 0.1]))
  assert out.shape == shape[:-1] + (2 * shape[-1],)
  assert not np.allclose(out, model.apply(params, t, x, t2=jnp.asarray([0.5, 0.9])))
  with pytest.raises(ValueError, match="t2 must be given if and only if second_time"):
    model.apply(params, t, x)
  with pytest.raises(ValueError, match="t2 must be given if and only if second_time"):
    plain.apply(p_plain, t, x, t2=t)


def _paths(tree, prefix=()):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for k, v in tree.items():
      yield from _paths(v, prefix + (k,))
  else:
    yield prefix


@pytest.mark.parametrize("name,kwargs", [(n, k) for n, k, _ in (getattr(m, "values", m) for m in MODELS)
                                         if n != "mlp"])
def test_meanflow_loss_differentiates_through_convolutions(name, kwargs):
  """jax.grad of the jvp-based loss traces on CPU (the jvp runs inside layers.forward_mode(): XLA's convolution)."""
  model = fm.models.make(name, second_time=True, **kwargs)
  x = jnp.zeros((2, 8, 8, 3))
  params = jax.eval_shape(lambda k: model.init(k, jnp.zeros(2), x, t2=jnp.zeros(2)), jax.random.PRNGKey(0))
  loss = meanflow.MeanFlowLoss(paths.make("linear"), meanflow.TimePairSampler())
  grads = jax.eval_shape(jax.grad(lambda p: loss(lambda q, t, z, t2: model.apply(q, t, z, t2=t2), p,
                                                 jax.random.PRNGKey(0), x, x)[0]), params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def _small_unet():
  model = fm.models.make("unet", second_time=True, num_channels=32, num_res_blocks=1, channel_mult=(1,),
                         attention_resolutions="1", dropout=0.1)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(2), x, t2=jnp.zeros(2))
  # the UNet's output layer starts at zero: perturb every parameter so that all of them act
  params = jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.sin(jnp.arange(a.size) + 1.0).reshape(a.shape), params)
  apply = lambda q, t, z, t2: model.apply(q, t, z, t2=t2, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  return apply, params, x


def _small_mlp():
  model, params = _mlp()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
  return (lambda q, t, z, t2: model.apply(q, t, z, t2=t2)), params, x


@pytest.mark.parametrize("net", [_small_mlp, pytest.param(_small_unet, marks=pytest.mark.slow)])
def test_split_and_fused_passes_give_the_same_loss_and_gradient(net):
  """On CPU u comes from a second, ordinary pass (fm's fast conv gradient); the paper's single jvp gives the same.

  The UNet (convolutions, dropout) is slow-marked (~20 s of compiles); the default suite checks the MLP here and
  that the UNet's CPU step compiles to canonical convolutions (next test)."""
  apply, params, x = net()
  x1 = jnp.flip(x, 0) + 0.3
  out = {}
  for fused in (False, True):
    loss = meanflow.MeanFlowLoss(paths.make("linear"), meanflow.TimePairSampler(equal_fraction=0.5), fused=fused)
    f = jax.jit(jax.value_and_grad(lambda p: loss(apply, p, jax.random.PRNGKey(1), x, x1)[0]))
    out[fused] = f(params)
  np.testing.assert_allclose(float(out[False][0]), float(out[True][0]), rtol=1e-6)
  assert float(out[False][0]) > 0
  for a, b in zip(jax.tree_util.tree_leaves(out[False][1]), jax.tree_util.tree_leaves(out[True][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert meanflow.MeanFlowLoss(paths.make("linear"), meanflow.TimePairSampler()).fused is None   # CPU: split


def test_meanflow_gradient_in_a_loop_compiles_to_canonical_convolutions_on_cpu():
  """The trainer's while loop: every convolution of the MeanFlow step (forward, jvp, gradient) is canonical.

  Before forward_mode(), MeanFlow nets used XLA's conv gradient, which XLA:CPU runs as naive loop
  nests inside loops (a CIFAR smoke step took minutes); this test fails on that code."""
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU path")
  apply, params, x = _small_unet()
  loss = meanflow.MeanFlowLoss(paths.make("linear"), meanflow.TimePairSampler())
  grad = jax.grad(lambda p: loss(apply, p, jax.random.PRNGKey(1), x, x + 1.0)[0])
  loop = jax.jit(lambda p: jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, grad(c[1])), (0, p))[1])
  hlo = loop.lower(params).compile().as_text()
  labels = [line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines() if " convolution(" in line]
  assert len(labels) >= 10 and set(labels) == {"b01f_01io->b01f"}, sorted(set(labels))
