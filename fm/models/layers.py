"""Layers shared by the image velocity networks (UNet, DiT)."""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Conv", "GroupNorm", "conv2d", "forward_mode", "timestep_embedding"]

_DN = ("NHWC", "HWIO", "NHWC")
_FORWARD_MODE = contextvars.ContextVar("fm_forward_mode", default=False)


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
  """Within this context, `Conv` traces XLA's own convolution, which `jax.jvp` can differentiate.

  `conv2d`'s custom gradient (fast inside XLA:CPU loops) has no forward-mode rule. A loss
  that differentiates the network forward (MeanFlow's total derivative) traces that call
  inside this context, and the network's ordinary forward and backward outside it, so
  only the forward-mode pass uses XLA's convolution (`fm.meanflow.MeanFlowLoss`). The
  numbers are the same either way; the context is read while tracing, so a jitted
  function traces it once.
  """
  token = _FORWARD_MODE.set(True)
  try:
    yield
  finally:
    _FORWARD_MODE.reset(token)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding `[B, dim]` of times `t` `[B]`: `[cos(t f_k), sin(t f_k)]`.

  Frequencies `f_k = max_period^(-k / (dim // 2))`, k = 0 .. dim//2 - 1, with cos
  first, as guided-diffusion / TorchCFM and DiT; an odd `dim` gets one zero column.
  Computed in float32 whatever the dtype of `t`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class GroupNorm(nn.Module):
  """GroupNorm over `[B, ..., C]` as PyTorch's `nn.GroupNorm`, computed in float32.

  Two-pass statistics (the mean first, then the mean square deviation), biased
  variance, `y = (x - mean_g) / sqrt(var_g + epsilon) * scale + bias`. Parameters
  `scale`, `bias` `[C]` as Flax's `nn.GroupNorm`, which computes the same numbers;
  this one reduces each channel over the spatial axes first (`[B, C]`) and only
  then over the channels of a group: XLA:CPU reduces the grouped layout
  `[B, HW, G, C/G]` over axes (1, 3) ~20x slower than over the spatial axes with
  channels minor, which made GroupNorm cost as much as a convolution there.
  Returns float32; callers cast.
  """
  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {self.num_groups} groups")
    x = x.astype(jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    per_group = c // self.num_groups
    expand = (x.shape[0],) + (1,) * len(spatial) + (c,)

    def group_mean(s):  # per-channel statistics [B, C] -> their group mean, broadcast to `expand`
      g = s.reshape(s.shape[0], self.num_groups, per_group).mean(-1)
      return jnp.repeat(g, per_group, axis=-1).reshape(expand)

    d = x - group_mean(x.mean(spatial))
    var = group_mean(jnp.square(d).mean(spatial))
    return d * jax.lax.rsqrt(var + self.epsilon) * scale + bias


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]):
  """2D cross-correlation `[B, H, W, Ci] x [kh, kw, Ci, Co] -> [B, H', W', Co]` (as `lax.conv`).

  The same numbers as `lax.conv_general_dilated` (NHWC, HWIO), with a gradient
  whose input and weight parts are each written as a forward convolution in
  XLA's canonical layout. XLA:CPU canonicalises the gradient convolutions that
  autodiff emits only outside loops: inside the trainer's `lax.while_loop` they
  ran as naive loop nests, 100-400x slower (3 s instead of 20 ms for one
  64-channel 32x32 weight gradient at batch 32), which made a UNet step take
  19 s instead of 0.6 s.
  """
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, res, g):
  x, w = res
  kh, kw = w.shape[:2]
  # input gradient: g (dilated by s) convolved with the flipped kernel, Ci and Co swapped in memory
  # (autodiff's version swaps them through dim_labels, which XLA:CPU also leaves slow inside loops)
  w_t = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2)).astype(x.dtype)  # [kh, kw, Co, Ci]
  pads = []
  for size, k, s, (lo, hi) in zip(x.shape[1:3], (kh, kw), strides, padding):
    rest = (size + lo + hi - k) % s   # rows of x the forward pass never reached
    pads.append((k - 1 - lo, k - 1 - hi + rest))
  dx = jax.lax.conv_general_dilated(g.astype(x.dtype), w_t, (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DN)
  # weight gradient dW[i, j, c, o] = sum_{b,h,w} xpad[b, s*h + i, s*w + j, c] g[b, h, w, o]:
  # a convolution with batch = c, features = b, and g as the (dilated by s) kernel
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  lhs = jnp.transpose(xp, (3, 1, 2, 0))                # [Ci, Hp, Wp, B]
  rhs = jnp.transpose(g.astype(x.dtype), (1, 2, 0, 3))  # [H', W', B, Co]
  dw = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), "VALID", rhs_dilation=strides, dimension_numbers=_DN)
  dw = jnp.transpose(dw[:, :kh, :kw, :], (1, 2, 0, 3))  # [kh, kw, Ci, Co]
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
  """`nn.Conv` for 2D NHWC inputs: same parameters (`kernel` `[kh, kw, Ci, Co]`, `bias` `[Co]`),
  same numbers; on CPU through `conv2d`, whose gradient stays fast inside XLA:CPU loops, on
  other platforms through `lax.conv_general_dilated` and XLA's own gradient.

  Inside `forward_mode()` it is XLA's convolution on every platform, so that `jax.jvp`
  can differentiate it (`conv2d`'s custom gradient has no forward-mode rule).

  padding: "SAME", "VALID" or `((top, bottom), (left, right))`.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  dtype: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
    padding = self.padding
    if isinstance(padding, str):
      padding = tuple(jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), tuple(self.strides), padding))
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in self.strides)

    def xla_conv(x, w):   # elsewhere XLA's own gradient (cuDNN's kernels on GPU)
      return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)

    if _FORWARD_MODE.get():
      y = xla_conv(x.astype(dtype), kernel.astype(dtype))
    else:
      y = jax.lax.platform_dependent(x.astype(dtype), kernel.astype(dtype),
                                     cpu=lambda x, w: conv2d(x, w, strides, padding), default=xla_conv)
    return y + bias.astype(dtype)
