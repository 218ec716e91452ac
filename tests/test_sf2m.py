"""SF2M: fm's targets, lambda(t) and losses equal TorchCFM's on identical inputs (fixture from TorchCFM itself)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import paths, sf2m, timesteps

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchcfm_sf2m.npz")


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_loss_matches_torchcfm(sigma):
  """experiments/fixtures/torchcfm_sf2m.py wrote TorchCFM's xt, ut, lambda and losses (float64)."""
  d = np.load(FIXTURE)
  g = lambda k: d[f"sigma{sigma:g}_{k}"]
  path = paths.make("sb", sigma=sigma)
  with jax.enable_x64(True):
    x0, x1, t, eps = (jnp.asarray(g(k)) for k in ("x0", "x1", "t", "eps"))
    x_t, u_t = path.interpolate(x0, x1, t, eps)
    np.testing.assert_allclose(np.asarray(x_t), g("xt"), rtol=1e-12, atol=1e-12)
    # TorchCFM adds 1e-8 to 2t(1-t): a relative 5e-6 at t = 1e-3 and 0.999
    np.testing.assert_allclose(np.asarray(u_t), g("ut"), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(sf2m.score_weight(path, t)), g("lambda_t"), rtol=1e-7)
    out = jnp.concatenate([jnp.asarray(g("vt")), jnp.asarray(g("st"))], axis=-1)
    flow, score = sf2m.sf2m_terms(path, x0, x1, t, eps, out)
  np.testing.assert_allclose(float(flow), float(g("flow_loss")), rtol=1e-5)    # the same 1e-8 in u_t
  np.testing.assert_allclose(float(score), float(g("score_loss")), rtol=1e-7)
  np.testing.assert_allclose(float(flow + score), float(g("loss")), rtol=1e-5)


def test_loss_call_and_bad_input():
  """The loss draws t and eps, feeds x_t to the net once and returns both terms; bad inputs are named."""
  path = paths.make("sb", sigma=1.0)
  loss_fn = sf2m.SF2MLoss(path, timesteps.make("uniform"))
  seen = []

  def apply_fn(params, t, x):
    seen.append(x.shape)
    return jnp.concatenate([x * params, -x], axis=-1)
  x0, x1 = jnp.ones((4, 2)), jnp.zeros((4, 2))
  loss, aux = loss_fn(apply_fn, 2.0, jax.random.PRNGKey(0), x0, x1)
  assert seen == [(4, 2)] and abs(float(loss) - float(aux["flow_loss"] + aux["score_loss"])) < 1e-6
  with pytest.raises(ValueError, match="build the model with outputs=2"):
    sf2m.split_flow_score(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="sf2m needs the Brownian-bridge path 'sb' with sigma > 0"):
    sf2m.SF2MLoss(paths.make("linear", sigma=0.1), timesteps.make("uniform"))
