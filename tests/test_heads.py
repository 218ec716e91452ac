"""Heads: which model options each needs and the fields they build (one forward per call)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm import heads, paths


def _model(kind):
  model = fm.models.make("mlp", width=8, depth=1, **heads.MODEL_OPTIONS[kind])
  extra = {"t2": jnp.zeros(3)} if kind == "average_velocity" else {}
  return model, model.init(jax.random.PRNGKey(0), jnp.zeros(3), jnp.zeros((3, 2)), **extra)


def test_fields_read_the_right_outputs():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32)
  model, params = _model("flow_score")
  head = heads.for_model(model)
  assert head == heads.make("flow_score")
  out = model.apply(params, jnp.full(3, 0.3), x)
  np.testing.assert_allclose(head.velocity(model, params)(0.3, x), out[:, :2], rtol=1e-6)
  sde = head.sde(model, params, noise=2.0, path=paths.make("sb", sigma=0.5))
  np.testing.assert_allclose(sde.drift(0.3, x), out[:, :2] + 4.0 * out[:, 2:], rtol=1e-5)
  assert abs(float(sde.diffusion(jnp.asarray(0.3))) - 1.0) < 1e-6

  model, params = _model("average_velocity")
  head = heads.for_model(model)
  assert head == heads.make("average_velocity")
  u = head.average_velocity(model, params)
  np.testing.assert_allclose(head.velocity(model, params)(0.3, x), u(0.3, x, 0.0), rtol=1e-6)
  assert not np.allclose(u(0.3, x, 0.5), u(0.3, x, 0.0))
  with pytest.raises(ValueError, match="a MeanFlow run has no score"):
    head.sde(model, params, 1.0, paths.make("linear"))

  model, params = _model("velocity")
  head, path = heads.for_model(model), paths.make("linear", sigma=0.0)
  assert head == heads.make("velocity")
  v = head.velocity(model, params)
  np.testing.assert_allclose(v(0.3, x), model.apply(params, jnp.full(3, 0.3), x), rtol=1e-6)
  m, _ = fm.stochastic.flow_noise_mean(path, jnp.asarray(0.3), x, v(0.3, x))
  np.testing.assert_allclose(head.sde(model, params, 1.0, path).drift(0.3, x), v(0.3, x) - 0.5 * m, rtol=1e-5)
  with pytest.raises(ValueError, match="does not output a flow and a score"):
    head.flow_and_score(model, params)


def test_bad_heads():
  with pytest.raises(ValueError, match="unknown head 'score'; valid heads: velocity, flow_score, average_velocity"):
    heads.make("score")
  model, params = _model("flow_score")
  with pytest.raises(ValueError, match="needs the Brownian-bridge path 'sb'"):
    heads.for_model(model).sde(model, params, 1.0, paths.make("linear"))
  with pytest.raises(ValueError, match="outputs=3 has no defined head"):
    heads.for_model(fm.models.make("mlp", outputs=3))
