"""Condition-aware couplings: `condition="within_class"` pairs x0 with x1 only inside x1's classes.

Given the labels `y1` `[B]` of x1, x0 is split at random into blocks of the
sizes of x1's classes in the batch (`assign_classes`: a uniformly random
partition, independent of x0's values), and the coupling is solved inside each
block. Shapes stay static under `jit`: the blocks are not cut out, the problem
is solved on the whole `[B, B]` cost with the pairs across classes forbidden
(`allowed = y0[:, None] == y1[None, :]`), which each coupling implements
exactly (see its `pairs(..., allowed)`):

* exact: those entries get a penalty larger than `B x (max - min)` of the
  cost, so no optimal assignment uses one; as every block is square, the
  optimum is the optimum of each block;
* unbalanced, partial: those entries are `+inf` (a `-inf` log-kernel): the
  solution of the problem restricted to the blocks;
* sinkhorn, sb (ott-jax): those entries get a penalty of `(max - min) + 100
  epsilon` (a kernel factor below e^-100), and the plan is then set to 0 on
  them before pairs are drawn;
* independent: a uniformly random pairing inside each class.

ε from `relative` is computed on the cost of the whole batch, so it is the same
as with `condition="none"`. Since x0 (noise) is independent of the classes and
the blocks are a uniformly random partition, the x0 that class c sees are still
distributed as x0 is (N(0, I)), as at sampling time (TorchCFM issue #117).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fm.couplings import base

__all__ = ["CONDITIONS", "assign_classes", "WithinClass"]

CONDITIONS = ("none", "within_class")


def assign_classes(key: jax.Array, y1: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A uniformly random class for each x0, with the class sizes of `y1`.

  Args:
    key: PRNG key.
    y1: labels of x1 `[B]` (int).

  Returns:
    `(y0, perm, order)`: `y0` `[B]` the class of each x0 (each class c gets
    exactly `count(y1 == c)` of them, a uniformly random subset), and the two
    `[B]` int32 permutations with `y0[perm[k]] == y1[order[k]]`: `perm` is
    uniformly random, `order` sorts `y1` (stable).
  """
  n = y1.shape[0]
  perm = jax.random.permutation(key, n).astype(jnp.int32)
  order = jnp.argsort(y1, stable=True).astype(jnp.int32)
  y0 = jnp.zeros_like(y1).at[perm].set(y1[order])
  return y0, perm, order


@dataclasses.dataclass(frozen=True)
class WithinClass:
  """`coupling` solved inside the classes of x1: `couple(key, x0, x1, y1) -> (i0, i1, info)`.

  Every pair has `y1[i1[k]]` equal to the class assigned to `x0[i0[k]]`;
  `info` is the coupling's. Needs equal batch sizes and the labels `y1`.
  """

  coupling: Any

  def __call__(self, key: jax.Array, x0: jax.Array, x1: jax.Array, y1: jax.Array | None = None):
    if y1 is None:
      raise ValueError("coupling condition 'within_class' needs the labels y1 of x1 (a conditional run); "
                       "use condition 'none' for an unconditional run")
    n = x0.shape[0]
    if x1.shape[0] != n or tuple(y1.shape) != (n,):
      raise ValueError(f"coupling condition 'within_class' needs x0, x1 and y1 with one batch size, got "
                       f"{x0.shape[0]}, {x1.shape[0]} and labels of shape {tuple(y1.shape)}")
    k_assign, k_pair = jax.random.split(key)
    y0, perm, order = assign_classes(k_assign, y1)
    if isinstance(self.coupling, base.Independent):
      return perm, order, base._info(x0, x1, perm, order)  # pylint: disable=protected-access
    return self.coupling.pairs(k_pair, x0, x1, allowed=y0[:, None] == y1[None, :])
