"""The ADM UNet of guided-diffusion as TorchCFM's `UNetModelWrapper` (torchcfm 1.0.7).

Same arguments, defaults, layer order and parameter count as TorchCFM's port, so that
`from_torch` loads a TorchCFM state dict and reproduces its outputs. Layout is
`[B, H, W, C]`. Submodules are named after TorchCFM's state-dict paths
(`input_blocks.1.0.in_layers.2` is the Flax path `input_blocks_1_0/in_layers_2`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fm.models.layers import Conv, GroupNorm, timestep_embedding

__all__ = ["UNet", "from_torch", "DEFAULT_CHANNEL_MULT", "DTYPES"]

DTYPES = ("float32", "bfloat16", "float16")   # compute dtypes (float64 would need x64 throughout)

# TorchCFM's `channel_mult=None` defaults, keyed by image width.
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (1, 2, 2, 2), 28: (1, 2, 2)}

# PyTorch's default Linear/Conv weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases start at 0.
_torch_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_zeros = nn.initializers.zeros


def _conv(features, name, dtype, size=3, stride=1, zero=False):
  pad = (size - 1) // 2
  return Conv(features, (size, size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
              dtype=dtype, kernel_init=_zeros if zero else _torch_init, name=name)


def _dense(features, name, dtype, zero=False):
  return nn.Dense(features, dtype=dtype, kernel_init=_zeros if zero else _torch_init, name=name)


def _norm(x, name):
  """GroupNorm(32 groups, eps 1e-5) computed in float32, returned in the dtype of x."""
  return GroupNorm(num_groups=32, epsilon=1e-5, name=name)(x).astype(x.dtype)


def _upsample(x):
  """Nearest-neighbour x2: `[B, H, W, C]` -> `[B, 2H, 2W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avgpool(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """GN -> SiLU -> conv, + time embedding (or scale-shift), GN -> SiLU -> dropout -> zero conv."""
  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train=False):
    """x: `[B, H, W, C]`, emb: `[B, E]`. Returns `[B, H', W', out_channels]`."""
    h = nn.silu(_norm(x, "in_layers_0"))
    if self.up:
      h, x = _upsample(h), _upsample(x)
    elif self.down:
      h, x = _avgpool(h), _avgpool(x)
    h = _conv(self.out_channels, "in_layers_2", self.dtype)(h)
    width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    e = _dense(width, "emb_layers_1", self.dtype)(nn.silu(emb))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = _norm(h, "out_layers_0") * (1 + scale) + shift
    else:
      h = _norm(h + e, "out_layers_0")
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = _conv(self.out_channels, "out_layers_3", self.dtype, zero=True)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, "skip_connection", self.dtype, size=1)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over the H*W positions with a residual, zero-initialised output projection.

  `legacy` (TorchCFM's default) splits the qkv channels into heads first, `[heads, 3, ch]`;
  otherwise into q, k, v first, `[3, heads, ch]`. q and k are each scaled by ch^-1/4.
  """
  num_heads: int
  legacy: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: `[B, H, W, C]` -> `[B, H, W, C]`."""
    b, hh, ww, c = x.shape
    n, ch = self.num_heads, c // self.num_heads
    qkv = _dense(3 * c, "qkv", self.dtype)(_norm(x, "norm").reshape(b, hh * ww, c))
    if self.legacy:
      q, k, v = jnp.moveaxis(qkv.reshape(b, hh * ww, n, 3, ch), 3, 0)
    else:
      q, k, v = jnp.moveaxis(qkv.reshape(b, hh * ww, 3, n, ch), 2, 0)
    s = ch ** -0.25
    w = jnp.einsum("bthc,bshc->bhts", q * s, k * s)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    a = jnp.einsum("bhts,bshc->bthc", w, v).reshape(b, hh * ww, c)
    return x + _dense(c, "proj_out", self.dtype, zero=True)(a).reshape(x.shape)


class Downsample(nn.Module):
  """3x3 conv with stride 2 and one pixel of padding each side (not SAME)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(x.shape[-1], "op", self.dtype, stride=2)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(x.shape[-1], "conv", self.dtype)(_upsample(x))


def _parse_resolutions(res) -> tuple[int, ...]:
  """'16,8', 16 or (16, 8) -> (16, 8); ValueError unless positive integer pixel sizes."""
  try:
    if isinstance(res, str):
      out = tuple(int(p) for p in res.split(","))
    elif isinstance(res, (int, np.integer)):
      out = (int(res),)
    else:
      out = tuple(int(r) for r in res)
  except (TypeError, ValueError):
    out = ()
  if not out or min(out) < 1:
    raise ValueError(f"attention_resolutions {res!r} must be positive pixel sizes such as '16', '16,8' or (16, 8)")
  return out


class UNet(nn.Module):
  """ADM UNet velocity field `v(t, x)` with TorchCFM `UNetModelWrapper` arguments.

  The image size is read from the input. TorchCFM's `class_cond` / `num_classes` pair is one
  argument here: `num_classes=None` or 0 (unconditional) or the number of labels; the label
  embedding has one more row than TorchCFM's, label `num_classes`, the null class of
  classifier-free guidance (as DiT's); `learn_sigma`,
  `use_checkpoint` and `use_fp16` are not offered (`dtype` replaces the last).

  Attributes:
    num_channels: base width; level i has `channel_mult[i] * num_channels` channels.
    num_res_blocks: ResBlocks per level on the way down (one more on the way up).
    channel_mult: per-level multipliers; None picks TorchCFM's default for the image width.
    attention_resolutions: pixel sizes (e.g. "16", "16,8" or (16,)) of the levels with attention;
      TorchCFM converts each to a downsampling factor `width // res`.
    num_heads: attention heads when `num_head_channels == -1`.
    num_head_channels: channels per head (overrides num_heads) or -1.
    num_heads_upsample: heads on the way up; -1 means num_heads.
    use_scale_shift_norm: FiLM conditioning `GN(h) * (1 + scale) + shift` instead of `h + emb`.
    dropout: dropout rate inside the ResBlocks (active only with `train=True`).
    resblock_updown: resample with ResBlocks instead of strided / nearest convs.
    use_new_attention_order: split qkv before heads (False: TorchCFM's legacy order).
    num_classes: number of class labels for a label embedding (`y` in [0, num_classes],
      `num_classes` = no class), or None / 0 for an unconditional net.
    dtype: compute dtype ("float32", "bfloat16", ...); parameters, GroupNorm and softmax stay float32.
    second_time: embed a second time `t2` (MeanFlow's interval length) like t, through its own
      `time_embed_r_0/2` layers, added to the time embedding; every other parameter keeps
      TorchCFM's name.
    outputs: number of fields stacked along the channel axis of the output (2 for SF2M's flow
      and score from one forward).
  """
  num_channels: int = 128
  num_res_blocks: int = 2
  channel_mult: Sequence[float] | None = None
  attention_resolutions: str | Sequence[int] = "16"
  num_heads: int = 1
  num_head_channels: int = -1
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = False
  dropout: float = 0.0
  resblock_updown: bool = False
  use_new_attention_order: bool = False
  num_classes: int | None = None
  dtype: Any = "float32"
  second_time: bool = False
  outputs: int = 1

  def __post_init__(self):
    # lists (e.g. from a config file) become tuples so that the module stays hashable
    if self.channel_mult is not None:
      object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    if not isinstance(self.attention_resolutions, str):
      object.__setattr__(self, "attention_resolutions", _parse_resolutions(self.attention_resolutions))
    super().__post_init__()
    try:
      dt = jnp.dtype(self.dtype)
    except TypeError:
      dt = None
    if dt is None or dt.name not in DTYPES:
      raise ValueError(f"dtype {self.dtype!r} is not supported (parameters and data are float32); "
                       f"valid: {', '.join(DTYPES)}")
    if self.channel_mult is not None and not self.channel_mult:
      raise ValueError("channel_mult=() has no level; valid: one multiplier per level, e.g. (1, 2, 2, 2), "
                       "or None for TorchCFM's default")
    _parse_resolutions(self.attention_resolutions)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout {self.dropout!r} must lie in [0, 1)")
    if isinstance(self.outputs, bool) or not isinstance(self.outputs, int) or self.outputs < 1:
      raise ValueError(f"UNet outputs {self.outputs!r} must be a positive integer")
    if self.num_res_blocks < 1:
      raise ValueError(f"num_res_blocks {self.num_res_blocks!r} must be a positive integer")
    mults = self.channel_mult if self.channel_mult is not None else (1,)
    for m in mults:
      if int(m * self.num_channels) % 32:
        raise ValueError(f"channel_mult {tuple(mults)!r} times num_channels {self.num_channels!r} must give "
                         "multiples of 32 (GroupNorm has 32 groups)")
    if self.num_head_channels == -1 and self.num_heads < 1:
      raise ValueError(f"num_heads {self.num_heads!r} must be positive when num_head_channels is -1")
    if self.num_heads_upsample != -1 and self.num_heads_upsample < 1:
      raise ValueError(f"num_heads_upsample {self.num_heads_upsample!r} must be positive or -1")
    if self.num_head_channels != -1 and self.num_head_channels < 1:
      raise ValueError(f"num_head_channels {self.num_head_channels!r} must be positive or -1")
    if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                         or self.num_classes < 0):
      raise ValueError(f"num_classes {self.num_classes!r} must be a positive integer, or 0 / None (unconditional)")

  def check_shape(self, shape: tuple[int, ...]) -> None:
    """ValueError unless images `[H, W, C]` of `shape` fit: the default channel_mult exists, every
    level halves whole pixels, every attention resolution names a level, and heads divide channels."""
    if len(shape) != 3:
      raise ValueError(f"the UNet takes images [H, W, C], got examples of shape {list(shape)}")
    height, width, _ = shape
    mult = self._mult(width)
    f = 2 ** (len(mult) - 1)
    if height % f or width % f:
      raise ValueError(f"image size {height}x{width} is not divisible by {f} = 2^({len(mult)} levels - 1) of "
                       f"channel_mult {tuple(mult)}; valid: fewer levels or a size divisible by {f}")
    levels = [width // 2 ** i for i in range(len(mult))]
    res = _parse_resolutions(self.attention_resolutions)
    ds = {width // r for r in res}
    missing = [r for r in res if width // r not in {2 ** i for i in range(len(mult))}]
    if missing:
      raise ValueError(f"attention_resolutions {missing[0]} names no level of the network; the levels at "
                       f"{height}x{width} are {', '.join(map(str, levels))}")
    heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
    for i, m in enumerate(mult):
      ch = int(m * self.num_channels)
      if 2 ** i in ds or i == len(mult) - 1:   # an attention level, or the middle block
        self._heads(ch, self.num_heads)
        self._heads(ch, heads_up)

  def _mult(self, width: int) -> tuple:
    if self.channel_mult is not None:
      return self.channel_mult
    if width not in DEFAULT_CHANNEL_MULT:
      raise ValueError(f"no default channel_mult for image width {width}; give channel_mult or use a width in "
                       f"{sorted(DEFAULT_CHANNEL_MULT)}")
    return DEFAULT_CHANNEL_MULT[width]

  def _heads(self, ch, num_heads):
    if self.num_head_channels == -1:
      heads = num_heads
    elif ch % self.num_head_channels:
      raise ValueError(f"num_head_channels {self.num_head_channels} does not divide the {ch} channels of an "
                       f"attention level; valid: a divisor of {ch} or -1")
    else:
      heads = ch // self.num_head_channels
    if ch % heads:
      raise ValueError(f"num_heads {heads} does not divide the {ch} channels of an attention level; "
                       f"valid: a divisor of {ch}")
    return heads

  @nn.compact
  def __call__(self, t, x, y=None, train: bool = False, t2=None):
    """t, t2: `[B]` or scalar in [0, 1]; x: `[B, H, W, C]`; y: `[B]` int labels iff num_classes.

    Returns the velocity `[B, H, W, outputs * C]` in the dtype of x; t2 is given iff second_time.
    """
    if (t2 is None) == self.second_time:
      raise ValueError(f"the second time t2 must be given if and only if second_time is set "
                       f"(second_time={self.second_time})")
    dt = jnp.dtype(self.dtype)
    b, height, width, c_in = x.shape
    mult = self._mult(width)
    f = 2 ** (len(mult) - 1)
    if height % f or width % f:
      raise ValueError(f"image size {height}x{width} must be divisible by {f} for {len(mult)} levels")
    if (y is None) == bool(self.num_classes):
      raise ValueError(f"labels y must be given if and only if num_classes is set (num_classes={self.num_classes})")
    attn_ds = {width // r for r in _parse_resolutions(self.attention_resolutions)}
    heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
    nc = self.num_channels

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,))
    emb = _dense(4 * nc, "time_embed_0", dt)(timestep_embedding(t, nc))
    emb = _dense(4 * nc, "time_embed_2", dt)(nn.silu(emb))
    if self.second_time:
      t2 = jnp.broadcast_to(jnp.asarray(t2, jnp.float32).reshape(-1), (b,))
      emb2 = _dense(4 * nc, "time_embed_r_0", dt)(timestep_embedding(t2, nc))
      emb = emb + _dense(4 * nc, "time_embed_r_2", dt)(nn.silu(emb2))
    if self.num_classes:
      emb = emb + nn.Embed(self.num_classes + 1, 4 * nc, dtype=dt, embedding_init=nn.initializers.normal(1.0),
                           name="label_emb")(y)

    def res(out, name, **kw):
      return ResBlock(out, self.dropout, self.use_scale_shift_norm, dtype=dt, name=name, **kw)

    def attn(ch, heads, name):
      return AttentionBlock(self._heads(ch, heads), not self.use_new_attention_order, dt, name=name)

    h = _conv(int(mult[0] * nc), "input_blocks_0_0", dt)(x.astype(dt))
    hs, k, ds = [h], 1, 1
    for level, m in enumerate(mult):
      for _ in range(self.num_res_blocks):
        h = res(int(m * nc), f"input_blocks_{k}_0")(h, emb, train)
        if ds in attn_ds:
          h = attn(h.shape[-1], self.num_heads, f"input_blocks_{k}_1")(h)
        hs.append(h)
        k += 1
      if level != len(mult) - 1:
        name = f"input_blocks_{k}_0"
        if self.resblock_updown:
          h = res(h.shape[-1], name, down=True)(h, emb, train)
        else:
          h = Downsample(dt, name=name)(h)
        hs.append(h)
        k, ds = k + 1, ds * 2

    h = res(h.shape[-1], "middle_block_0")(h, emb, train)
    h = attn(h.shape[-1], self.num_heads, "middle_block_1")(h)
    h = res(h.shape[-1], "middle_block_2")(h, emb, train)

    k = 0
    for level, m in reversed(list(enumerate(mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res(int(m * nc), f"output_blocks_{k}_0")(h, emb, train)
        j = 1
        if ds in attn_ds:
          h = attn(h.shape[-1], heads_up, f"output_blocks_{k}_1")(h)
          j = 2
        if level and i == self.num_res_blocks:
          name = f"output_blocks_{k}_{j}"
          if self.resblock_updown:
            h = res(h.shape[-1], name, up=True)(h, emb, train)
          else:
            h = Upsample(dt, name=name)(h)
          ds //= 2
        k += 1

    h = nn.silu(_norm(h, "out_0"))
    return _conv(c_in * self.outputs, "out_2", dt, zero=True)(h).astype(x.dtype)


def _flax_path(torch_prefix: str) -> tuple[str, ...]:
  """'input_blocks.1.0.in_layers.2' -> ('input_blocks_1_0', 'in_layers_2')."""
  path = []
  for tok in torch_prefix.split("."):
    if tok.isdigit() and path:
      path[-1] += f"_{tok}"
    else:
      path.append(tok)
  return tuple(path)


def _torch_name(path: tuple[str, ...]) -> str:
  leaf = "bias" if path[-1] == "bias" else "weight"
  return ".".join(re.sub(r"_(\d+)", r".\1", p) for p in path[:-1]) + "." + leaf


def from_torch(model: UNet, state_dict: Mapping[str, Any], image_shape=(32, 32, 3)) -> dict:
  """Flax variables `{"params": ...}` for `model` from a TorchCFM `UNetModelWrapper` state dict.

  state_dict maps TorchCFM's names to arrays (numpy or anything `np.asarray` takes). Conv
  weights go OIHW -> HWIO, Linear and the 1x1 Conv1d of attention are transposed, GroupNorm
  weights become `scale`. image_shape `(H, W, C)` fixes the architecture (default channel_mult,
  attention levels). TorchCFM's label embedding has no null-class row: a zero row is appended
  (so guidance needs fine-tuning with label dropout first). Raises ValueError naming any
  missing or unexpected key or bad shape.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes else None
  shapes = jax.eval_shape(lambda t, x, y: model.init(jax.random.PRNGKey(0), t, x, y), t, x, y)["params"]
  flat = traverse_util.flatten_dict(shapes)
  leaves = {}
  for p in flat:
    leaves.setdefault(p[:-1], set()).add(p[-1])
  out = {}
  for name, w in state_dict.items():
    w = np.asarray(w, np.float32)
    prefix, _, leaf = name.rpartition(".")
    mod = _flax_path(prefix)
    if mod not in leaves or leaf not in ("weight", "bias"):
      raise ValueError(f"unexpected key {name!r} in the state dict for this UNet configuration")
    kinds = leaves[mod]
    if leaf == "bias":
      key = "bias"
    elif "kernel" in kinds:
      key = "kernel"
      if w.ndim == 4:
        w = w.transpose(2, 3, 1, 0)
      elif w.ndim == 3 and w.shape[-1] == 1:
        w = w[:, :, 0].T
      elif w.ndim == 2:
        w = w.T
    else:
      key = "embedding" if "embedding" in kinds else "scale"
    want = flat.get((*mod, key))
    if key == "embedding" and want is not None and w.ndim == 2 and w.shape[0] + 1 == want.shape[0]:
      w = np.concatenate([w, np.zeros((1, w.shape[1]), w.dtype)])   # the null class (see the docstring)
    if want is None or tuple(want.shape) != w.shape:
      raise ValueError(f"key {name!r} has shape {np.shape(state_dict[name])}, which does not map to "
                       f"{'/'.join((*mod, key))} of shape {None if want is None else tuple(want.shape)}")
    out[(*mod, key)] = jnp.asarray(w)
  missing = [_torch_name(p) for p in flat if p not in out]
  if missing:
    raise ValueError(f"state dict is missing key(s) {missing}")
  return {"params": traverse_util.unflatten_dict(out)}
