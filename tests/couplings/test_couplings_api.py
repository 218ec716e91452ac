"""Registry, info keys, jit (single trace) and image-shaped inputs."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm

CONFIGS = [("independent", {}), ("exact", {}), ("exact", {"solver": "auction"}),
           ("sinkhorn", {}), ("sb", {"sigma": 1.0})]


def test_names():
  assert set(fm.couplings.NAMES) == {"independent", "exact", "sinkhorn", "sb", "unbalanced", "partial"}


def test_unknown_name_and_kwarg():
  with pytest.raises(ValueError, match="'nope'.*exact"):
    fm.couplings.make("nope")
  with pytest.raises(ValueError, match="bogus.*epsilon"):
    fm.couplings.make("sinkhorn", bogus=1)
  with pytest.raises(ValueError, match="epsilon.*sigma"):
    fm.couplings.make("sb", epsilon=0.1)
  with pytest.raises(ValueError, match="auction"):
    fm.couplings.make("exact", solver="magic")
  with pytest.raises(ValueError, match="valid"):
    fm.couplings.plan(jnp.zeros((4, 2)), jnp.zeros((4, 2)), method="ot")


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_jit_traces_once_images(name, kw):
  couple = fm.couplings.make(name, **kw)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key, x0, x1):
    return couple(key, x0, x1)

  chex.clear_trace_counter()
  for seed in range(2):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x0 = jax.random.normal(k0, (16, 3, 8, 8))
    x1 = jax.random.normal(k1, (16, 3, 8, 8)) + 0.3
    i0, i1, info = step(k2, x0, x1)
    assert i0.shape == i1.shape == (16,) and i0.dtype == i1.dtype == jnp.int32
    x0p, x1p = fm.couplings.apply(i0, i1, x0, x1)
    assert x0p.shape == x0.shape and x1p.shape == x1.shape
    assert {"cost_before", "cost_after"} <= set(info)
    if name in ("sinkhorn", "sb"):
      assert {"converged", "iterations", "epsilon"} <= set(info)
    for v in info.values():
      assert isinstance(v, jax.Array) and v.shape == ()
    if name == "independent":
      np.testing.assert_array_equal(x1p, x1)
    if name == "exact":
      assert info["cost_after"] <= info["cost_before"] + 1e-5


@pytest.mark.parametrize("method", ["independent", "exact", "sinkhorn", "sb", "partial"])
def test_plan_sums_to_one_images(method):
  x0 = jax.random.normal(jax.random.PRNGKey(0), (8, 3, 8, 8))
  x1 = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 8, 8))
  p = fm.couplings.plan(x0, x1, method=method)
  assert p.shape == (8, 8)
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["exact", "sinkhorn", "unbalanced", "partial"])
def test_apply_carries_any_pytree_with_its_pair(name):
  """Labels attached to x1 follow their example through the coupling's indices."""
  x0 = jax.random.normal(jax.random.PRNGKey(0), (12, 2))
  x1 = jax.random.normal(jax.random.PRNGKey(1), (12, 2)) + 1.0
  y1 = jnp.arange(12) * 10
  i0, i1, _ = jax.jit(fm.couplings.make(name, replace=True) if name != "exact" else fm.couplings.make(name))(
      jax.random.PRNGKey(2), x0, x1)
  (a0, _), (a1, b1) = fm.couplings.apply(i0, i1, (x0, jnp.zeros(12)), (x1, {"y": y1}))
  np.testing.assert_array_equal(a0, np.asarray(x0)[np.asarray(i0)])
  np.testing.assert_array_equal(a1, np.asarray(x1)[np.asarray(i1)])
  np.testing.assert_array_equal(b1["y"], np.asarray(i1) * 10)
