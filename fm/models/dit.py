"""DiT (Peebles & Xie 2023) as a flow-matching velocity net `v_theta(t, x)`.

Follows facebookresearch/DiT `models.py`: a conv patch embedding (kernel = stride =
patch size), a fixed 2-D sin-cos position embedding, `depth` adaLN-Zero transformer
blocks conditioned on `c = emb(t) (+ emb(y))`, an adaLN final layer and unpatchify.
Differences, all deliberate: images are `[B, H, W, C]`, the output has as many
channels as the input (a velocity, no learned sigma), the time `t` in [0, 1] is
multiplied by `time_scale` before the sinusoidal embedding, and the fixed position
embedding is a constant rather than a frozen parameter (so it is not in `params`).
Parameter names follow the official ones so that checkpoints map one to one.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fm.models.layers import Conv, timestep_embedding

__all__ = ["DiT", "SIZES", "DTYPES", "sincos_pos_embed_2d", "patchify", "unpatchify"]

# name -> (depth, hidden_size, num_heads, patch_size), as DiT's `DiT_models`.
SIZES = {
    f"{k}/{p}": (d, w, h, p)
    for k, (d, w, h) in {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                         "XL": (28, 1152, 16)}.items()
    for p in (2, 4, 8)
}
DTYPES = ("float32", "bfloat16", "float16")

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_normal02 = nn.initializers.normal(0.02)


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> np.ndarray:
  """Fixed position embedding `[h * w, dim]` (float32) of a row-major `h x w` grid.

  As DiT / MAE `get_2d_sincos_pos_embed`: the first `dim/2` features embed the column
  index and the last `dim/2` the row index, each as `[sin(pos w_k), cos(pos w_k)]`
  with `w_k = 10000^(-k / (dim/4))`, k = 0 .. dim/4 - 1. `dim` must be a multiple of 4.
  """
  if dim % 4:
    raise ValueError(f"position embedding width {dim} is not a multiple of 4; valid widths are multiples of 4")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

  def one_d(pos):  # [M] -> [M, dim/2]
    a = pos[:, None] * omega[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)

  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  return np.concatenate([one_d(cols.reshape(-1)), one_d(rows.reshape(-1))], axis=1).astype(np.float32)


def patchify(x: jax.Array, p: int) -> jax.Array:
  """`[B, H, W, C]` -> tokens `[B, (H/p)(W/p), p*p*C]`, tokens row-major, features (i, j, c).

  This is the order in which a `p x p` stride-`p` conv kernel `[p, p, C, D]` reshaped
  to `[p*p*C, D]` reads a patch, and the order `unpatchify` writes one.
  """
  b, hh, ww, c = x.shape
  x = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (hh // p) * (ww // p), p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int) -> jax.Array:
  """Inverse of `patchify`: tokens `[B, h*w, p*p*C]` -> `[B, h*p, w*p, C]` (DiT's unpatchify, NHWC)."""
  b, _, f = x.shape
  c = f // (p * p)
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def _layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm without affine parameters, eps 1e-6, computed in float32."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32)(
      x.astype(jnp.float32))


def _modulate(x, shift, scale):
  """`x * (1 + scale) + shift` with per-sample `shift, scale` `[B, D]` over tokens `[B, T, D]`."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class _Block(nn.Module):
  """adaLN-Zero block: `x += g1 * attn(mod(LN(x)))`, `x += g2 * mlp(mod(LN(x)))`.

  The residual stream stays float32; the Dense layers and attention run in `dtype`.
  """
  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, c):
    """x: `[B, T, D]` float32; c: `[B, D]`. Returns `[B, T, D]` float32."""
    d, n, dt = self.hidden_size, self.num_heads, self.dtype
    dense = lambda f, name, init=_xavier: nn.Dense(f, dtype=dt, kernel_init=init, name=name)
    mod = nn.Dense(6 * d, dtype=dt, kernel_init=_zeros, bias_init=_zeros, name="adaLN_modulation")
    mods = mod(nn.silu(c)).astype(jnp.float32)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mods, 6, axis=-1)

    b, t, _ = x.shape
    h = _modulate(_layer_norm(x), shift1, scale1).astype(dt)
    qkv = dense(3 * d, "qkv")(h).reshape(b, t, 3, n, d // n)  # timm's (3, heads, head_dim) split
    # XLA attention: logits and softmax in float32 whatever the input dtype.
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, t, d)
    a = dense(d, "proj")(a)
    x = x + gate1[:, None, :] * a.astype(jnp.float32)

    h = _modulate(_layer_norm(x), shift2, scale2).astype(dt)
    h = nn.gelu(dense(int(d * self.mlp_ratio), "fc1")(h), approximate=True)
    h = dense(d, "fc2")(h)
    return x + gate2[:, None, :] * h.astype(jnp.float32)


class DiT(nn.Module):
  """Diffusion Transformer velocity field `v(t, x[, y])` with adaLN-Zero conditioning.

  Output is exactly zero at initialisation (adaLN-Zero: every modulation Dense and
  the final Dense start at zero). Image size and channels are read from `x`; H and W
  must be multiples of the patch size (non-square grids are allowed).

  Attributes:
    size: one of `SIZES` ("S/2", "B/2", ...): depth, hidden size, heads and patch size.
    depth, hidden_size, num_heads, patch_size: override the entries of `size` when set
      (None or 0: the preset's value).
    mlp_ratio: MLP width over hidden size (4 in DiT).
    num_classes: if > 0, the model is class-conditional and needs `y` `[B]` int labels
      in [0, num_classes]; label `num_classes` is the "no class" token (DiT's extra
      embedding row for classifier-free guidance), so a trainer can drop labels by
      writing `num_classes`.
    time_scale: `t` in [0, 1] is embedded as `timestep_embedding(time_scale * t, 256)`.
      DiT embeds diffusion steps in [0, 1000]; with frequencies from 1 down to 1e-4, an
      unscaled t in [0, 1] would turn every phase by less than one radian, leaving the
      embedding nearly linear in t. 1000 restores DiT's range.
    dtype: compute dtype ("float32", "bfloat16", "float16" or a jnp dtype); parameters
      stay float32, LayerNorm, softmax and the residual stream run in float32.
    second_time: embed a second time `t2` (MeanFlow's interval length) with its own
      `r_embedder_mlp_0/2`, added to the conditioning `c` (as MeanFlow's DiT does).
    outputs: number of fields stacked along the channel axis of the output.
  """
  size: str = "S/2"
  depth: int | None = None
  hidden_size: int | None = None
  num_heads: int | None = None
  patch_size: int | None = None
  mlp_ratio: float = 4.0
  num_classes: int | None = None
  time_scale: float = 1000.0
  dtype: str | jnp.dtype = "float32"
  second_time: bool = False
  outputs: int = 1

  def __post_init__(self):
    if self.size not in SIZES:
      raise ValueError(f"unknown DiT size {self.size!r}; valid sizes: {', '.join(SIZES)}")
    for name in ("depth", "hidden_size", "num_heads", "patch_size"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ValueError(f"DiT {name}={v!r} is invalid; valid: a positive integer, or 0 / None (from size)")
    d, n = self.config[1], self.config[2]
    if d % n or d % 4:
      raise ValueError(f"DiT hidden_size {d} is invalid; valid: multiples of num_heads ({n}) and of 4 "
                       "(the 2-D position embedding)")
    if isinstance(self.outputs, bool) or not isinstance(self.outputs, int) or self.outputs < 1:
      raise ValueError(f"DiT outputs={self.outputs!r} is invalid; valid: a positive integer")
    if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                         or self.num_classes < 0):
      raise ValueError(f"DiT num_classes={self.num_classes!r} is invalid; valid: a positive integer, or 0 / None "
                       f"(unconditional)")
    try:
      ok = jnp.dtype(self.dtype).name in DTYPES
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f"unknown DiT dtype {self.dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    super().__post_init__()

  @property
  def config(self) -> tuple[int, int, int, int]:
    """`(depth, hidden_size, num_heads, patch_size)` after overrides."""
    base = SIZES[self.size]
    over = (self.depth, self.hidden_size, self.num_heads, self.patch_size)
    return tuple(b if not o else o for b, o in zip(base, over))

  def check_shape(self, shape: tuple[int, ...]) -> None:
    """ValueError unless images `[H, W, C]` of `shape` split into whole patches."""
    p = self.config[3]
    if len(shape) != 3:
      raise ValueError(f"DiT takes images [H, W, C], got examples of shape {list(shape)}")
    if shape[0] % p or shape[1] % p:
      raise ValueError(f"image size {shape[0]}x{shape[1]} is not divisible by the DiT patch size {p}; "
                       f"valid: a patch_size dividing both (e.g. {', '.join(str(q) for q in (1, 2, 4, 8) if not shape[0] % q and not shape[1] % q)})")

  @nn.compact
  def __call__(self, t, x, y=None, train: bool = False, t2=None):
    """t, t2: `[B]` or scalar in [0, 1]; x: `[B, H, W, C]`; y: `[B]` int labels if `num_classes`.

    Returns the velocity `[B, H, W, outputs * C]` in x's dtype; t2 is given iff
    `second_time`. `train` is accepted for the common calling convention and ignored
    (DiT uses no dropout).
    """
    del train
    if (t2 is None) == self.second_time:
      raise ValueError(f"the second time t2 must be given if and only if second_time is set "
                       f"(second_time={self.second_time})")
    depth, d, n, p = self.config
    dt = jnp.dtype(self.dtype)
    b, hh, ww, ch = x.shape
    if hh % p or ww % p:
      raise ValueError(f"image size {hh}x{ww} is not divisible by the DiT patch size {p}; "
                       f"valid sizes are multiples of {p}")
    if (y is None) == bool(self.num_classes):
      raise ValueError("DiT labels y must be given exactly when num_classes is set "
                       f"(num_classes={self.num_classes}, y given: {y is not None})")
    gh, gw = hh // p, ww // p

    # Patch embedding, initialised like a Dense on the flattened patch (as DiT does).
    conv_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
    h = Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=dt, kernel_init=conv_init,
             name="x_embedder")(x.astype(dt))
    h = h.reshape(b, gh * gw, d).astype(jnp.float32) + jnp.asarray(sincos_pos_embed_2d(d, gh, gw))

    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    c = timestep_embedding(self.time_scale * t, 256)
    c = nn.Dense(d, dtype=dt, kernel_init=_normal02, name="t_embedder_mlp_0")(c.astype(dt))
    c = nn.Dense(d, dtype=dt, kernel_init=_normal02, name="t_embedder_mlp_2")(nn.silu(c))
    if self.second_time:
      t2 = jnp.broadcast_to(jnp.asarray(t2, jnp.float32), (b,))
      c2 = timestep_embedding(self.time_scale * t2, 256)
      c2 = nn.Dense(d, dtype=dt, kernel_init=_normal02, name="r_embedder_mlp_0")(c2.astype(dt))
      c = c + nn.Dense(d, dtype=dt, kernel_init=_normal02, name="r_embedder_mlp_2")(nn.silu(c2))
    c = c.astype(jnp.float32)
    if self.num_classes:
      table = nn.Embed(self.num_classes + 1, d, embedding_init=_normal02, name="y_embedder")
      c = c + table(jnp.asarray(y, jnp.int32))

    for i in range(depth):
      h = _Block(d, n, self.mlp_ratio, dt, name=f"blocks_{i}")(h, c)

    mod = nn.Dense(2 * d, dtype=dt, kernel_init=_zeros, bias_init=_zeros, name="final_adaLN_modulation")
    shift, scale = jnp.split(mod(nn.silu(c)).astype(jnp.float32), 2, axis=-1)
    h = _modulate(_layer_norm(h), shift, scale).astype(dt)
    h = nn.Dense(p * p * ch * self.outputs, dtype=dt, kernel_init=_zeros, bias_init=_zeros, name="final_linear")(h)
    return unpatchify(h, p, gh, gw).astype(x.dtype)
