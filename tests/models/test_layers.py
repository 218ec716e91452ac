"""fm.models.layers: GroupNorm against a float64 numpy reference and Flax's nn.GroupNorm."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm.models.layers import GroupNorm


def _reference(x, scale, bias, groups, eps):
  """PyTorch's GroupNorm formula in float64: biased variance over (spatial, channels of a group)."""
  x = np.asarray(x, np.float64)
  b, c = x.shape[0], x.shape[-1]
  xg = x.reshape(b, -1, groups, c // groups)
  mean = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return y * scale + bias


@pytest.mark.parametrize("shape,groups", [((3, 8, 6, 64), 32), ((2, 5, 96), 32), ((2, 4, 4, 8), 4)])
def test_group_norm_matches_float64_formula_and_flax(shape, groups):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  # an offset mean makes a one-pass variance lose digits; the two-pass one must not
  x = 3.0 + 2.0 * jax.random.normal(k1, shape)
  c = shape[-1]
  scale = 1 + 0.1 * jax.random.normal(k2, (c,))
  bias = 0.1 * jax.random.normal(k3, (c,))
  gn = GroupNorm(num_groups=groups, epsilon=1e-5)
  params = {"params": {"scale": scale, "bias": bias}}
  y = gn.apply(params, x)
  assert y.dtype == jnp.float32 and y.shape == shape
  np.testing.assert_allclose(y, _reference(x, np.asarray(scale), np.asarray(bias), groups, 1e-5), atol=2e-5)
  flax_gn = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)
  np.testing.assert_allclose(y, flax_gn.apply(params, x), atol=2e-5)
  # gradients (which XLA derives from the channel-first reductions) agree with Flax's too
  w = jax.random.normal(k3, shape)
  g = jax.grad(lambda p, x: jnp.sum(w * gn.apply(p, x)), argnums=(0, 1))(params, x)
  g_ref = jax.grad(lambda p, x: jnp.sum(w * flax_gn.apply(p, x)), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_group_norm_parameters_init_and_bad_channels():
  x = jnp.ones((2, 4, 4, 64), jnp.bfloat16)
  params = GroupNorm().init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(params["params"]["scale"], np.ones(64))
  np.testing.assert_array_equal(params["params"]["bias"], np.zeros(64))
  assert GroupNorm().apply(params, x).dtype == jnp.float32   # computed in float32 whatever x is
  with pytest.raises(ValueError, match="48 channels are not divisible by 32 groups"):
    GroupNorm().init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 48)))
