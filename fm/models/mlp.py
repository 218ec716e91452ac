"""A time-conditioned MLP velocity field for low-dimensional data (toys)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {"selu": nn.selu, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu,
               "tanh": jnp.tanh, "elu": nn.elu}


class MLP(nn.Module):
  """v(t, x) = MLP([x, t]) with `depth` hidden layers of `width` units.

  Matches TorchCFM's `MLP(dim, w, time_varying=True)` for depth=3: the time is
  appended to the flattened input as one more feature. A class-conditional MLP
  (`num_classes > 0`) also appends a learnt `width`-dim embedding of the label
  `y` in [0, num_classes] (`num_classes` is the null class of classifier-free
  guidance).

  Attributes:
    dim: number of features of a flattened sample; None infers it from `x`.
    width: hidden units per layer.
    depth: number of hidden layers.
    activation: one of `ACTIVATIONS`.
    num_classes: number of class labels (0: unconditional, no `y`).
    second_time: take a second time `t2` `[B]` as one more input feature (MeanFlow's
      interval length); then `t2` must be passed, otherwise it must not.
    outputs: number of fields stacked along the last axis of the output (2 for SF2M's
      flow and score from one forward): the output is `[B, *shape[:-1], outputs * C]`.
  """
  dim: int | None = None
  width: int = 64
  depth: int = 3
  activation: str = "selu"
  num_classes: int = 0
  second_time: bool = False
  outputs: int = 1

  def check(self) -> None:
    """ValueError naming a bad option (called by `fm.models.make`)."""
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
    for name in ("width", "depth"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"MLP {name} must be a positive integer, got {value!r}")
    n = self.num_classes
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ValueError(f"MLP num_classes must be an integer >= 0 (0 = unconditional), got {n!r}")
    if isinstance(self.outputs, bool) or not isinstance(self.outputs, int) or self.outputs < 1:
      raise ValueError(f"MLP outputs must be a positive integer, got {self.outputs!r}")

  @nn.compact
  def __call__(self, t, x, y=None, train: bool = False, t2=None):
    """t, t2: `[B]` or scalar; x: `[B, *shape]`; y: `[B]` int labels iff `num_classes`.

    Returns `[B, *shape]` (last axis x outputs); `train` is unused (no dropout).
    """
    del train
    if (y is None) == bool(self.num_classes):
      raise ValueError(f"labels y must be given if and only if num_classes is set (num_classes={self.num_classes})")
    if (t2 is None) == self.second_time:
      raise ValueError(f"the second time t2 must be given if and only if second_time is set "
                       f"(second_time={self.second_time})")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[self.activation]
    batch = x.shape[0]
    h = x.reshape(batch, -1)
    t = jnp.broadcast_to(jnp.asarray(t, h.dtype), (batch,))
    dim = h.shape[1] if self.dim is None else self.dim
    if dim != h.shape[1]:
      raise ValueError(f"MLP built for dim={self.dim} got samples of shape {x.shape[1:]}")
    feats = [h, t[:, None]]
    if self.second_time:
      feats.append(jnp.broadcast_to(jnp.asarray(t2, h.dtype), (batch,))[:, None])
    h = jnp.concatenate(feats, axis=1)
    if self.num_classes:
      emb = nn.Embed(self.num_classes + 1, self.width, name="label_emb")(jnp.asarray(y, jnp.int32))
      h = jnp.concatenate([h, emb.astype(h.dtype)], axis=1)
    for _ in range(self.depth):
      h = act(nn.Dense(self.width)(h))
    return nn.Dense(dim * self.outputs)(h).reshape(x.shape[:-1] + (x.shape[-1] * self.outputs,))
