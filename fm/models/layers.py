"""Layers shared by the image velocity networks (UNet, DiT)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["timestep_embedding"]


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
