"""fm.models.unet against TorchCFM's UNetModelWrapper (fixture from experiments/fixtures/torchcfm_unet.py)."""
from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm.models.unet import AttentionBlock, ResBlock, from_torch

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "unet_torchcfm.npz"
CIFAR = dict(num_channels=128, num_res_blocks=2, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,),
             num_heads=4, num_head_channels=64, dropout=0.1)


def _kwargs(torch_kw):
  """TorchCFM UNetModelWrapper kwargs -> (fm kwargs, image shape (H, W, C))."""
  kw = dict(torch_kw)
  c, h, w = kw.pop("dim")
  if not kw.pop("class_cond", False):
    kw.pop("num_classes", None)
  if "channel_mult" in kw:
    kw["channel_mult"] = tuple(kw["channel_mult"])
  return kw, (h, w, c)


@functools.lru_cache(maxsize=None)
def _case(tag):
  """(model kwargs, image shape, state dict, t, x [B, H, W, C], y, torch output [B, H, W, C])."""
  f = np.load(FIXTURE)
  kw, shape = _kwargs(json.loads(str(f[f"{tag}/config"])))
  sd = {str(n): f[f"{tag}/sd/{n}"].astype(np.float32) * np.float32(2.0 ** e)
        for n, e in zip(f[f"{tag}/names"], f[f"{tag}/exps"])}
  y = f[f"{tag}/y"] if f"{tag}/y" in f else None
  return (kw, shape, sd, f[f"{tag}/t"], f[f"{tag}/x"].transpose(0, 2, 3, 1), y,
          f[f"{tag}/out"].transpose(0, 2, 3, 1))


@functools.lru_cache(maxsize=None)
def _loaded(tag):
  kw, shape, sd, *_ = _case(tag)
  model = fm.models.make("unet", **kw)
  return model, from_torch(model, sd, image_shape=shape)


def _count(model, shape, labels=False):
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if labels else None
  p = jax.eval_shape(lambda x, y: model.init(jax.random.PRNGKey(0), jnp.zeros(1), x, y), x, y)
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(p))


@pytest.mark.parametrize("tag", ["A", "B"])
def test_from_torch_reproduces_torchcfm(tag):
  # A: legacy attention at 16x16 and 8x8, num_heads_upsample; B: scale-shift norm, resblock
  # up/down, new attention order, num_head_channels, class labels. Every weight is non-zero.
  *_, t, x, y, ref = _case(tag)
  model, params = _loaded(tag)
  v = np.asarray(jax.jit(model.apply)(params, t, x, y=y))
  assert v.shape == ref.shape and v.dtype == np.float32
  scale = np.abs(ref).max()
  assert scale > 1.0  # the net is far from its zero init
  np.testing.assert_allclose(v, ref, atol=1e-4 * scale, rtol=0)


def test_parameter_counts_match_torchcfm():
  model = fm.models.make("unet", **CIFAR)
  assert _count(model, (32, 32, 3)) == 35_746_307
  f = np.load(FIXTURE)
  for torch_kw, n in json.loads(str(f["counts"]))[1:]:
    kw, shape = _kwargs(torch_kw)
    null_row = 4 * kw["num_channels"] if "num_classes" in kw else 0   # fm's extra null-class embedding row
    assert _count(fm.models.make("unet", **kw), shape, "num_classes" in kw) == n + null_row, torch_kw


TINY = dict(num_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions="4",
            num_head_channels=16)


def test_blocks_are_identity_at_init_and_dropout_only_in_training():
  # Zero-initialised last conv / output projection: each block starts as the identity.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
  emb = rng.standard_normal((2, 16)).astype(np.float32)
  key = jax.random.key(0, impl="rbg")  # rbg keys compile much faster than threefry ones on CPU
  block = ResBlock(32, dropout=0.5)
  params = jax.jit(block.init)(key, x, emb)
  apply = jax.jit(block.apply, static_argnames="train")
  np.testing.assert_array_equal(apply(params, x, emb), x)
  k = params["params"]["in_layers_2"]["kernel"]  # 3x3x32 fan-in: U(-1/sqrt(288), 1/sqrt(288))
  assert 0.8 / np.sqrt(288) < np.abs(k).max() <= 1 / np.sqrt(288)
  attn = AttentionBlock(2)
  np.testing.assert_array_equal(jax.jit(attn.apply)(jax.jit(attn.init)(key, x), x), x)
  # dropout (GN -> SiLU -> dropout -> conv in each ResBlock) acts only with train=True
  params = jax.tree_util.tree_map(lambda a: np.asarray(a) + 0.1, params)  # undo the zero init
  base = apply(params, x, emb)
  k0, k1 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
  a = apply(params, x, emb, train=True, rngs={"dropout": k0})
  b = apply(params, x, emb, train=True, rngs={"dropout": k1})
  np.testing.assert_array_equal(apply(params, x, emb, train=True, rngs={"dropout": k0}), a)
  assert np.abs(a - base).max() > 0.1 and np.abs(a - b).max() > 0.1
  # the UNet passes `train` down: only its training graph samples dropout masks (traced, not run)
  model = fm.models.make("unet", **TINY, dropout=0.3)
  t, x = jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), t, x)
  for train in (False, True):
    graph = jax.make_jaxpr(lambda p, t, x, k: model.apply(p, t, x, train=train, rngs={"dropout": k}))(
        params, t, x, jax.random.PRNGKey(0))
    assert ("bernoulli" in str(graph)) == train


@pytest.mark.slow
def test_unet_zero_output_at_init_and_shapes():
  model = fm.models.make("unet", **TINY, dropout=0.1)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 4, 3))  # non-square
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(2), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
  apply = jax.jit(model.apply, static_argnames="train")
  v = apply(params, jnp.array([0.1, 0.9]), x)
  assert v.shape == x.shape
  np.testing.assert_array_equal(v, 0.0)  # zero-initialised output conv
  v = apply(params, 0.5, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})  # scalar t
  assert v.shape == x.shape
  np.testing.assert_array_equal(v, 0.0)
  p = params["params"]
  for leaf in (p["out_2"]["kernel"], p["out_2"]["bias"], p["middle_block_1"]["proj_out"]["kernel"],
               p["input_blocks_1_1"]["proj_out"]["kernel"], p["input_blocks_1_0"]["out_layers_3"]["kernel"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_shapes_and_dtypes():
  # traced only: non-square input, scalar t, bf16 compute with float32 parameters
  model = fm.models.make("unet", **TINY, dtype="bfloat16")
  x = jax.ShapeDtypeStruct((2, 16, 8, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(2), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
  v = jax.eval_shape(lambda p, x: model.apply(p, 0.5, x), params, x)
  assert v.shape == x.shape and v.dtype == jnp.float32
  graph = str(jax.make_jaxpr(lambda p, x: model.apply(p, 0.5, x))(params, x))
  assert "bf16[2,16,8,32]" in graph  # activations in bfloat16


@pytest.mark.slow
def test_bfloat16_close_to_float32():
  kw, shape, sd, t, x, y, ref = _case("B")
  model = fm.models.make("unet", **kw, dtype="bfloat16")
  params = from_torch(model, sd, image_shape=shape)
  v = jax.jit(model.apply)(params, t, x, y=y)
  assert v.dtype == jnp.float32
  err = np.abs(np.asarray(v) - ref).max() / np.abs(ref).max()
  assert 1e-4 < err < 5e-2  # bf16 really used, yet close


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown argument"):
    fm.models.make("unet", model_channels=64)
  with pytest.raises(ValueError, match="'int32' is not supported.*valid: float32, bfloat16, float16"):
    fm.models.make("unet", dtype="int32")
  with pytest.raises(ValueError, match="'float64' is not supported"):   # would run in float32 silently
    fm.models.make("unet", dtype="float64")
  with pytest.raises(ValueError, match=r"channel_mult=\(\) has no level"):
    fm.models.make("unet", channel_mult=())
  with pytest.raises(ValueError, match="attention_resolutions"):
    fm.models.make("unet", attention_resolutions="16;8")
  with pytest.raises(ValueError, match="attention_resolutions"):
    fm.models.make("unet", attention_resolutions=[0])
  with pytest.raises(ValueError, match="multiples of 32"):
    fm.models.make("unet", num_channels=48)
  with pytest.raises(ValueError, match="dropout"):
    fm.models.make("unet", dropout=1.5)
  small = dict(num_channels=32, num_res_blocks=1, channel_mult=(1, 1))

  def init(model, x, y=None):  # traced only, nothing computed
    return jax.eval_shape(lambda y: model.init(jax.random.PRNGKey(0), jnp.zeros(1), jnp.zeros(x), y), y)

  with pytest.raises(ValueError, match="no default channel_mult for image width 20"):
    init(fm.models.make("unet", num_channels=32), (1, 20, 20, 3))
  with pytest.raises(ValueError, match="divisible by 2"):
    init(fm.models.make("unet", **small), (1, 15, 15, 3))
  with pytest.raises(ValueError, match="num_head_channels 24"):
    init(fm.models.make("unet", **small, attention_resolutions="8", num_head_channels=24), (1, 8, 8, 3))
  with pytest.raises(ValueError, match="if and only if"):
    init(fm.models.make("unet", **small), (1, 8, 8, 3), jnp.zeros(1, jnp.int32))
  with pytest.raises(ValueError, match="if and only if"):
    init(fm.models.make("unet", **small, num_classes=3), (1, 8, 8, 3))


def test_from_torch_errors_name_the_key():
  kw, shape, sd, *_ = _case("B")
  model = fm.models.make("unet", **kw)
  bad = dict(sd)
  del bad["middle_block.1.qkv.weight"]
  with pytest.raises(ValueError, match=r"missing key\(s\) \['middle_block.1.qkv.weight'\]"):
    from_torch(model, bad, image_shape=shape)
  with pytest.raises(ValueError, match="unexpected key 'middle_block.7.weight'"):
    from_torch(model, {**sd, "middle_block.7.weight": np.zeros(3)}, image_shape=shape)
  with pytest.raises(ValueError, match="key 'out.2.weight' has shape"):
    from_torch(model, {**sd, "out.2.weight": np.zeros((3, 32, 1, 3))}, image_shape=shape)
  with pytest.raises(ValueError, match="unexpected key 'label_emb.weight'"):
    nolabel = {k: v for k, v in kw.items() if k != "num_classes"}
    from_torch(fm.models.make("unet", **nolabel), sd, image_shape=shape)


@pytest.mark.parametrize("kw,shape,match", [
    (dict(channel_mult=(1, 2, 2, 2)), (20, 20, 3), r"20x20 is not divisible by 8 = 2\^\(4 levels - 1\)"),
    (dict(channel_mult=(1, 2), attention_resolutions=(64,)), (32, 32, 3),
     "attention_resolutions 64 names no level of the network; the levels at 32x32 are 32, 16"),
    (dict(channel_mult=(1, 2), attention_resolutions="16,5"), (32, 32, 3), "attention_resolutions 5 names"),
    (dict(num_channels=32, channel_mult=(1, 2), num_head_channels=24), (16, 16, 3),
     "num_head_channels 24 does not divide the 32 channels"),
    (dict(num_channels=96, channel_mult=(1,), num_heads=5, attention_resolutions="16"), (16, 16, 3),
     "num_heads 5 does not divide the 96 channels"),
    (dict(), (24, 24, 3), "no default channel_mult for image width 24"),
    (dict(), (32, 3), r"takes images \[H, W, C\]"),
])
def test_check_shape_refuses_before_any_work(kw, shape, match):
  model = fm.models.make("unet", **kw)
  with pytest.raises(ValueError, match=match):
    fm.models.check_shape(model, shape)


def test_check_shape_accepts_what_runs():
  """Every accepted shape also initialises (no check stricter than the network)."""
  for kw, shape in ((dict(num_channels=32, channel_mult=(1, 2), attention_resolutions="8"), (16, 16, 3)),
                    (dict(num_channels=32, channel_mult=(1, 2), attention_resolutions="16,8",
                          num_head_channels=16), (8, 16, 3))):
    model = fm.models.make("unet", **kw)
    fm.models.check_shape(model, shape)
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,)), jnp.zeros((1, *shape)))
