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
  # jitted (as the models run it): one compile each instead of an op-by-op dispatch of every primitive
  y = jax.jit(gn.apply)(params, x)
  assert y.dtype == jnp.float32 and y.shape == shape
  np.testing.assert_allclose(y, _reference(x, np.asarray(scale), np.asarray(bias), groups, 1e-5), atol=2e-5)
  flax_gn = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)
  np.testing.assert_allclose(y, jax.jit(flax_gn.apply)(params, x), atol=2e-5)
  # gradients (which XLA derives from the channel-first reductions) agree with Flax's too
  w = jax.random.normal(k3, shape)
  g = jax.jit(jax.grad(lambda p, x: jnp.sum(w * gn.apply(p, x)), argnums=(0, 1)))(params, x)
  g_ref = jax.jit(jax.grad(lambda p, x: jnp.sum(w * flax_gn.apply(p, x)), argnums=(0, 1)))(params, x)
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


@pytest.mark.parametrize("k,stride,pad,hw", [
    (3, 1, ((1, 1), (1, 1)), (8, 8)),     # the UNet's 3x3 convolutions
    (3, 2, ((1, 1), (1, 1)), (8, 6)),     # its downsampling (padding 1 each side, not SAME)
    (1, 1, ((0, 0), (0, 0)), (5, 7)),     # 1x1 skip connections
    (2, 2, ((0, 0), (0, 0)), (8, 8)),     # DiT's patch embedding
    (3, 2, ((0, 1), (2, 0)), (7, 9)),     # odd sizes, uneven padding
])
def test_conv2d_value_and_gradient_match_lax_in_float64(k, stride, pad, hw):
  from fm.models.layers import conv2d
  with jax.enable_x64(True):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(k1, (3, *hw, 4), jnp.float64)
    w = jax.random.normal(k2, (k, k, 4, 5), jnp.float64)

    def ref(x, w):
      return jax.lax.conv_general_dilated(x, w, (stride, stride), pad,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, w: conv2d(x, w, (stride, stride), pad)
    vjp = lambda f: jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))   # jitted: one compile, not op by op
    y = jax.jit(ours)(x, w)
    np.testing.assert_allclose(y, jax.jit(ref)(x, w), rtol=1e-12, atol=1e-12)
    g = np.asarray(jax.random.normal(k3, y.shape, jnp.float64))   # numpy: the brute force below indexes it
    got = vjp(ours)(x, w, g)
    want = vjp(ref)(x, w, g)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # brute force for one weight-gradient entry: sum over b, h, w of xpad[b, s h + i, s w + j, c] g[b, h, w, o]
    xp = np.pad(np.asarray(x), ((0, 0), *pad, (0, 0)))
    i, j, c, o = k - 1, 0, 2, 3
    ho, wo = y.shape[1:3]
    brute = sum(xp[b, stride * h + i, stride * v + j, c] * g[b, h, v, o]
                for b in range(3) for h in range(ho) for v in range(wo))
    np.testing.assert_allclose(got[1][i, j, c, o], brute, rtol=1e-10)


def test_conv_module_matches_flax_conv_and_is_fast_in_loops():
  from fm.models.layers import Conv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  ours = Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  flax_conv = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  params = flax_conv.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), atol=1e-5)
  assert ours.apply(params, x.astype(jnp.bfloat16)).dtype == jnp.float32   # promotes as nn.Conv does
  y16 = ours.clone(dtype=jnp.bfloat16).apply(params, x)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(y16.astype(jnp.float32), flax_conv.apply(params, x), atol=0.1)
  # the gradient inside a while loop (the trainer's multi-step) equals the one outside
  loss = lambda p: jnp.sum(ours.apply(p, x) ** 2)
  g1 = jax.grad(loss)(params)
  g2 = jax.lax.while_loop(lambda c: c[0] < 1, lambda c: (c[0] + 1, jax.grad(loss)(params)),
                          (0, jax.tree.map(jnp.zeros_like, params)))[1]
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_gradient_in_a_loop_compiles_to_canonical_convolutions_on_cpu():
  """Inside a while loop XLA:CPU ran non-canonical gradient convolutions as naive loop nests."""
  from fm.models.layers import Conv
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU path")
  x = jnp.ones((2, 8, 8, 4))
  convs = [Conv(8, (3, 3), padding=((1, 1), (1, 1))), Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))]
  params = [c.init(jax.random.PRNGKey(0), x) for c in convs]
  loss = lambda ps, x: sum(jnp.sum(c.apply(p, x) ** 2) for c, p in zip(convs, ps))
  body = lambda c: (c[0] + 1, *jax.grad(loss, argnums=(0, 1))(c[1], c[2]))   # weight and input gradients
  loop = jax.jit(lambda ps, x: jax.lax.while_loop(lambda c: c[0] < 2, body, (0, ps, x))[1:])
  hlo = loop.lower(params, x).compile().as_text()
  labels = [line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines() if " convolution(" in line]
  assert len(labels) >= 6 and set(labels) == {"b01f_01io->b01f"}, labels
