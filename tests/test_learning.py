"""Every method learns, and the evaluation measures what it claims to.

- Each method, trained with `configs/toy2d.py:smoke` through the real trainer
  and evaluator, lowers its loss and ends with a W2 far below both the
  untrained network's and that of doing nothing (source vs target).
- OT-CFM's paths are straighter than I-CFM's (normalised path energy).
- On an analytic flow, a translation by `s`, the evaluation's numbers equal
  independent float64 computations: W2 = |s|, path energy = |s|^2.
- SB-CFM's plan is an independent numpy log-domain Sinkhorn at epsilon = 2 sigma^2.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special

from fm import methods, metrics
from fm.evaluate import sampling, toy

# MeanFlow is left out of the two smoke-budget checks: 300 steps at batch 64 do not train its
# average velocity (measured: W2 1.00 with the preset, 1.75 with loss.p = 0; its weighted loss
# is near-flat by design). tests/test_meanflow.py checks its loss exactly, and
# experiments/sde/toy.py measures it trained (1-step W2 0.53 at 5000 steps, docs/meanflow.md).
SMOKE_TRAINED = tuple(m for m in methods.NAMES if m != "meanflow")


@pytest.mark.parametrize("method", SMOKE_TRAINED)
def test_loss_falls(smoke_runs, method):   # smoke_runs: tests/conftest.py
  _, rows, _ = smoke_runs[method]
  assert [r["step"] for r in rows] == [100, 200, 300]
  assert rows[-1]["loss"] < 0.95 * rows[0]["loss"], [r["loss"] for r in rows]


@pytest.mark.parametrize("method", SMOKE_TRAINED)
def test_w2_beats_untrained_and_doing_nothing(smoke_runs, method):
  """Measured (seed 0): W2 0.5-0.8 after 300 steps; untrained 5.65; source vs target 2.62."""
  result, _, _ = smoke_runs[method]
  untrained = smoke_runs["untrained"]["w2"]
  assert result["dopri5_success"]
  assert result["w2"] < 0.2 * untrained, (result["w2"], untrained)
  assert result["w2"] < 0.5 * result["w2_source_target"], (result["w2"], result["w2_source_target"])


def test_ot_paths_straighter_than_independent(smoke_runs):
  """Normalised path energy |PE - W2^2| / W2^2 (0 for straight OT paths); measured 0.14 vs 0.48."""
  ot, _, _ = smoke_runs["otcfm"]
  independent, _, _ = smoke_runs["icfm"]
  assert ot["normalized_path_energy"] < 0.5 * independent["normalized_path_energy"]


class _Translation:
  """A 'model' whose velocity is the constant `s`: the flow maps x0 to x0 + s along straight lines."""

  def __init__(self, shift):
    self.shift = tuple(float(v) for v in shift)

  def apply(self, params, t, x):
    del params, t
    return jnp.broadcast_to(jnp.asarray(self.shift, x.dtype), x.shape)


def _w2_float64(x, y):
  cost = ((np.asarray(x, np.float64)[:, None] - np.asarray(y, np.float64)[None]) ** 2).sum(-1)
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return float(np.sqrt(cost[rows, cols].mean()))


def test_evaluation_of_a_translation_flow():
  shift = np.array([1.5, -2.0])                       # |s| = 2.5
  model = _Translation(shift)
  x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (300, 2)))
  x1, info = sampling.generate(model, None, jnp.asarray(x0), "dopri5", rtol=1e-6, atol=1e-6)
  assert bool(info["success"])
  np.testing.assert_allclose(np.asarray(x1), x0 + shift, atol=1e-5)
  # W2 between a cloud and its translate is the shift, and the metric finds it.
  np.testing.assert_allclose(float(metrics.w2(x1, jnp.asarray(x0))), 2.5, rtol=1e-5)
  # The evaluation itself (held-out target, W2, path energy, normalised path energy) against float64.
  result = toy.evaluate(model, None, "gaussian->gaussian", num_samples=300, seed=0, euler_steps=10)
  k_src, k_tgt = toy.eval_keys(0)
  from fm.data import toys
  src = np.asarray(toys.sample("gaussian", k_src, 300))
  tgt = np.asarray(toys.sample("gaussian", k_tgt, 300))
  np.testing.assert_allclose(result["path_energy"], 2.5 ** 2, rtol=1e-5)   # E int |v|^2 dt = |s|^2
  np.testing.assert_allclose(result["w2"], _w2_float64(src + shift, tgt), rtol=1e-4)
  np.testing.assert_allclose(result["w2_euler"], _w2_float64(src + shift, tgt), rtol=1e-4)
  w2_st = _w2_float64(src, tgt)
  np.testing.assert_allclose(result["w2_source_target"], w2_st, rtol=1e-4)
  np.testing.assert_allclose(result["normalized_path_energy"], abs(2.5 ** 2 - w2_st ** 2) / w2_st ** 2, rtol=1e-3)
  # With the target the translate of the source, the normalised path energy is 0: the flow is the OT map.
  pe = metrics.path_energy(jnp.asarray(np.stack([x0 + k / 10 * shift for k in range(11)])), jnp.linspace(0, 1, 11))
  np.testing.assert_allclose(float(metrics.normalized_path_energy(pe, 2.5 ** 2)), 0.0, atol=1e-5)


def _sinkhorn_numpy(x0, x1, eps, iterations=20_000):
  """Log-domain Sinkhorn between uniform measures in float64: the plan `[n, m]`.

  At most `iterations` sweeps; it stops early once the row marginals are exact to 1e-13 relative
  (the columns are exact after every sweep), far below what the callers compare at.
  """
  c = ((np.asarray(x0, np.float64)[:, None] - np.asarray(x1, np.float64)[None]) ** 2).sum(-1)
  n, m = c.shape
  log_k = -c / eps
  log_u, log_v = np.zeros(n), np.zeros(m)
  for it in range(iterations):
    log_u = -np.log(n) - scipy.special.logsumexp(log_k + log_v[None, :], axis=1)
    log_v = -np.log(m) - scipy.special.logsumexp(log_k + log_u[:, None], axis=0)
    if it % 50 == 49:
      rows = scipy.special.logsumexp(log_u[:, None] + log_k + log_v[None, :], axis=1)
      if np.abs(np.expm1(rows + np.log(n))).max() < 1e-13:
        break
  return np.exp(log_u[:, None] + log_k + log_v[None, :])


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_sbcfm_plan_is_sinkhorn_at_two_sigma_squared(sigma):
  k0, k1 = jax.random.split(jax.random.PRNGKey(3))
  x0 = jax.random.normal(k0, (24, 2))
  x1 = jax.random.normal(k1, (24, 2)) * 0.7 + jnp.array([1.0, 0.5])
  coupling = methods.make("sbcfm", sigma=sigma, threshold=1e-6, max_iterations=20_000).coupling
  plan = np.asarray(jax.jit(coupling.plan)(x0, x1), np.float64)
  reference = _sinkhorn_numpy(x0, x1, 2 * sigma ** 2)
  np.testing.assert_allclose(plan, reference, atol=2e-3 / 24 ** 2, rtol=0)
  # The check can fail: the plan at epsilon = sigma^2 (another convention) is far from it.
  assert np.abs(_sinkhorn_numpy(x0, x1, sigma ** 2, 2000) - plan).max() > 10 * 2e-3 / 24 ** 2
