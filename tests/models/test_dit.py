"""DiT velocity net: position embedding, patch order, adaLN-Zero init, sizes, dtypes."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm.models.dit import patchify, sincos_pos_embed_2d, unpatchify

TINY = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2, num_classes=5)
NULL = 5  # the "no class" label of TINY
C = 3  # channels everywhere: then one set of TINY parameters fits every image size


@pytest.fixture(scope="module")
def tiny():
  """`(model, apply, params at init, perturbed params)`; compiled once per module (slow CPU)."""
  model = fm.models.make("dit", **TINY)
  t, x, y = np.zeros(1, np.float32), np.zeros((1, 4, 4, C), np.float32), np.zeros(1, np.int32)
  params = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(0), t, x, y=y))
  return model, jax.jit(model.apply), params, _perturb(params)


def _perturb(params, scale=0.05, seed=0):
  """Adds N(0, scale^2) to every parameter so that no zero-init layer stays zero."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda p: p + scale * rng.standard_normal(p.shape).astype(p.dtype), params)


def _data(b, h, w, seed=1):
  """Random `(t [B], x [B, h, w, C], y [B])` as numpy arrays."""
  rng = np.random.default_rng(seed)
  return (rng.uniform(size=b).astype(np.float32), rng.standard_normal((b, h, w, C)).astype(np.float32),
          rng.integers(0, NULL + 1, size=b).astype(np.int32))


def _pos_embed_loops(dim, h, w):
  """MAE / DiT 2-D sin-cos embedding written out entry by entry, float64.

  Token r*w + c; features [sin(c w_k), cos(c w_k), sin(r w_k), cos(r w_k)],
  each block dim/4 wide, w_k = 10000^(-k / (dim/4)).
  """
  q = dim // 4
  out = np.zeros((h * w, dim))
  for r in range(h):
    for c in range(w):
      for k in range(q):
        om = 10000.0 ** (-k / q)
        out[r * w + c, k] = np.sin(c * om)
        out[r * w + c, q + k] = np.cos(c * om)
        out[r * w + c, 2 * q + k] = np.sin(r * om)
        out[r * w + c, 3 * q + k] = np.cos(r * om)
  return out


def _intercept_input(model, params, module_name, t, x, y):
  """Runs `model.apply` (jitted) and returns the first input of submodule `module_name`."""

  def run(params, t, x, y):
    seen = {}

    def grab(next_fun, a, kw, context):
      if context.module.name == module_name and context.method_name == "__call__":
        seen.setdefault("x", a[0])
      return next_fun(*a, **kw)

    with nn.intercept_methods(grab):
      model.apply(params, t, x, y=y)
    return seen["x"]

  return np.asarray(jax.jit(run)(params, t, x, y))


def test_sincos_pos_embed_matches_formula():
  for dim, h, w in [(16, 3, 5), (32, 4, 4), (8, 1, 7)]:
    np.testing.assert_allclose(sincos_pos_embed_2d(dim, h, w), _pos_embed_loops(dim, h, w), atol=1e-6)
  # a hand value: token (row 1, col 2) of a 2x3 grid, dim 4 -> [sin 2, cos 2, sin 1, cos 1]
  np.testing.assert_allclose(sincos_pos_embed_2d(4, 2, 3)[5], [np.sin(2), np.cos(2), np.sin(1), np.cos(1)],
                             atol=1e-6)


def test_patchify_order_and_unpatchify_inverse():
  b, hh, ww, c, p = 2, 6, 4, 3, 2
  x = np.arange(b * hh * ww * c, dtype=np.float32).reshape(b, hh, ww, c)  # per-pixel index image
  tok = np.asarray(patchify(jnp.asarray(x), p))
  assert tok.shape == (b, (hh // p) * (ww // p), p * p * c)
  for i in range(hh):
    for j in range(ww):
      for k in range(c):
        assert tok[1, (i // p) * (ww // p) + j // p, ((i % p) * p + j % p) * c + k] == x[1, i, j, k]
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tok), p, hh // p, ww // p)), x)
  # unpatchify agrees with DiT's NCHW one: reshape (n, h, w, p, q, c), 'nhwpqc->nchpwq'
  y = np.random.default_rng(0).normal(size=(b, 6, p * p * c)).astype(np.float32)
  ref = np.einsum("nhwpqc->nchpwq", y.reshape(b, 3, 2, p, p, c)).reshape(b, c, 3 * p, 2 * p)
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(y), p, 3, 2)), ref.transpose(0, 2, 3, 1))


def test_tokens_are_patch_embedding_plus_fixed_pos_embedding(tiny):
  model, _, _, params = tiny
  assert "pos" not in str(jax.tree_util.tree_structure(params))  # fixed, not learned
  t, x, y = _data(2, 6, 4)
  h0 = _intercept_input(model, params, "blocks_0", t, x, y)
  kern = np.asarray(params["params"]["x_embedder"]["kernel"], np.float64)  # [p, p, C, D]
  bias = np.asarray(params["params"]["x_embedder"]["bias"], np.float64)
  want = np.zeros((2, 6, 32))
  for r in range(3):
    for c in range(2):
      patch = x[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2, :].astype(np.float64)
      want[:, r * 2 + c] = np.einsum("bijc,ijcd->bd", patch, kern) + bias
  want += _pos_embed_loops(32, 3, 2)[None]
  np.testing.assert_allclose(h0, want, atol=1e-4)


def test_time_is_scaled_by_1000_and_embedded_cos_first(tiny):
  model, _, _, params = tiny
  _, x, y = _data(3, 4, 4)
  t = np.array([0.0, 0.3, 1.0], np.float32)
  emb = _intercept_input(model, params, "t_embedder_mlp_0", t, x, y)
  k = np.arange(128)
  a = 1000.0 * t.astype(np.float64)[:, None] * np.exp(-np.log(10000.0) * k / 128)[None]
  np.testing.assert_allclose(emb, np.concatenate([np.cos(a), np.sin(a)], 1), atol=2e-4)


def test_zero_output_at_init_and_dependence_after_perturbation(tiny):
  model, apply, params0, params = tiny
  t, x, y = _data(4, 8, 8)
  y[-1] = NULL
  v = apply(params0, t, x, y=y)
  assert v.shape == x.shape and v.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(v), 0.0)  # adaLN-Zero
  v = np.asarray(apply(params, t, x, y=y))
  assert np.abs(v).min() > 0
  gap = lambda a: np.abs(np.asarray(a) - v).max() / np.abs(v).max()
  assert gap(apply(params, t + 0.1, x, y=y)) > 1e-3
  assert gap(apply(params, t, x, y=(y + 1) % (NULL + 1))) > 1e-3
  x2 = x.copy()
  x2[:, :2, :2] += 1.0
  v2 = np.asarray(apply(params, t, x2, y=y))
  assert gap(v2) > 1e-3
  # attention mixes patches: changing one patch changes the output at another
  assert np.abs(v2[:, 6:, 6:] - v[:, 6:, 6:]).max() > 1e-4
  # train= is accepted (DiT has no dropout: the flag is dropped unread); a scalar t broadcasts
  assert jax.eval_shape(model.apply, params, t, x, y=y, train=True).shape == x.shape
  np.testing.assert_allclose(apply(params, 0.5, x, y=y), apply(params, np.full(4, 0.5, np.float32), x, y=y),
                             rtol=1e-6, atol=1e-7)


def _dit_count(depth, d, p, c_in, c_out, num_classes=None, tokens=0, mlp_ratio=4):
  """Parameters of DiT by formula (timm Attention with qkv bias, Mlp, adaLN-Zero)."""
  lin = lambda i, o: i * o + o
  block = lin(d, 6 * d) + lin(d, 3 * d) + lin(d, d) + lin(d, mlp_ratio * d) + lin(mlp_ratio * d, d)
  patch = p * p * c_in * d + d
  temb = lin(256, d) + lin(d, d)
  yemb = 0 if num_classes is None else (num_classes + 1) * d  # + the CFG "null" row
  final = lin(d, 2 * d) + lin(d, p * p * c_out)
  return depth * block + patch + temb + yemb + final + tokens * d  # tokens * d: frozen pos_embed


def _count(model, shape, **kw):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  t = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  shapes = jax.eval_shape(lambda t, x: model.init(jax.random.PRNGKey(0), t, x, **kw), t, x)
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))


def test_parameter_counts_match_formula():
  # the formula reproduces the official DiT-XL/2 count (256px -> 32x32x4 latents, learn_sigma,
  # 1000 classes, pos_embed as a frozen Parameter): 675,129,632, the paper's "675M"
  assert _dit_count(28, 1152, 2, 4, 8, num_classes=1000, tokens=256) == 675_129_632
  assert _count(fm.models.make("dit", size="S/2"), (1, 32, 32, 3)) == _dit_count(12, 384, 2, 3, 3) == 32_471_436
  assert _count(fm.models.make("dit", size="B/2"), (1, 32, 32, 3)) == _dit_count(12, 768, 2, 3, 3) == 129_528_588
  assert _count(fm.models.make("dit", size="S/4"), (1, 32, 32, 3)) == _dit_count(12, 384, 4, 3, 3)
  assert (_count(fm.models.make("dit", **TINY), (1, 8, 8, 1), y=jnp.zeros(1, jnp.int32))
          == _dit_count(2, 32, 2, 1, 1, num_classes=5))


@pytest.mark.slow
def test_parameter_count_xl2_model():
  model = fm.models.make("dit", size="XL/2", num_classes=1000)
  n = _count(model, (1, 32, 32, 4), y=jnp.zeros(1, jnp.int32))
  # ours: no learned sigma (out channels 4, not 8) and no pos_embed parameter
  assert n == _dit_count(28, 1152, 2, 4, 4, num_classes=1000) == 675_129_632 - 256 * 1152 - (1152 * 16 + 16)


def test_bfloat16_close_to_float32(tiny):
  _, apply, _, params = tiny
  bf16 = fm.models.make("dit", dtype="bfloat16", **TINY)
  t, x, y = _data(2, 8, 8)
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), t, x, y=y)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
  v32 = np.asarray(apply(params, t, x, y=y))
  v16 = np.asarray(jax.jit(bf16.apply)(params, t, x, y=y))
  assert v16.dtype == np.float32
  err = np.abs(v16 - v32).max() / np.abs(v32).max()
  assert 0 < err < 3e-2, err  # bf16 keeps 8 mantissa bits: ~0.4% per rounding


@pytest.mark.slow
def test_bfloat16_gradients(tiny):
  _, apply, _, params = tiny
  bf16 = fm.models.make("dit", dtype="bfloat16", **TINY)
  t, x, y = _data(2, 8, 8)
  loss = lambda p, m: jnp.sum(m.apply(p, t, x, y=y) ** 2)
  l32, g32 = jax.jit(jax.value_and_grad(lambda p: loss(p, fm.models.make("dit", **TINY))))(params)
  l16, g16 = jax.jit(jax.value_and_grad(lambda p: loss(p, bf16)))(params)
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  for a, b in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
    assert a.dtype == np.float32
    assert np.abs(a - b).max() <= 0.1 * np.abs(b).max() + 1e-6


def test_non_square_images(tiny):
  _, apply, _, params = tiny
  t, x, y = _data(1, 4, 12)
  v = np.asarray(apply(params, t, x, y=y))
  assert v.shape == (1, 4, 12, C) and np.isfinite(v).all()


def test_bad_options():
  with pytest.raises(ValueError, match="valid sizes: S/2, S/4, S/8, B/2"):
    fm.models.make("dit", size="M/2")
  with pytest.raises(ValueError, match="hidden_size 30 is invalid"):
    fm.models.make("dit", hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="valid dtypes"):
    fm.models.make("dit", dtype="int8")
  with pytest.raises(ValueError, match="valid dtypes"):
    fm.models.make("dit", dtype="float64")
  with pytest.raises(ValueError, match="patch size 4; valid: a patch_size dividing both"):
    fm.models.check_shape(fm.models.make("dit", patch_size=4), (30, 30, 3))
  fm.models.check_shape(fm.models.make("dit", patch_size=2), (30, 30, 3))
  with pytest.raises(ValueError, match="unknown argument"):
    fm.models.make("dit", dropout=0.1)
  model = fm.models.make("dit", **TINY)
  t, x, y = _data(1, 4, 4)
  with pytest.raises(ValueError, match="not divisible by the DiT patch size 2"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), t, x[:, :3], y=y)
  with pytest.raises(ValueError, match="labels y"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), t, x)
  with pytest.raises(ValueError, match="labels y"):
    jax.eval_shape(fm.models.make("dit", size="S/2", depth=1).init, jax.random.PRNGKey(0), t, x, y=y)


def test_size_is_a_preset_and_zero_means_from_size():
  """The config's DiT keys: 0 (the config default) takes the preset's value, a positive one overrides it."""
  assert fm.models.make("dit", size="B/4", depth=0, hidden_size=0, num_heads=0, patch_size=0).config == (12, 768, 12, 4)
  assert fm.models.make("dit", size="B/4", depth=2, hidden_size=48, num_heads=0).config == (2, 48, 12, 4)
  with pytest.raises(ValueError, match="DiT depth=-1 is invalid"):
    fm.models.make("dit", depth=-1)
