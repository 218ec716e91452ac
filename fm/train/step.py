"""The jitted training step: up to K steps per dispatch, on device, no host sync.

`make_multi_step` returns `multi_step(state, num_steps, data) -> (state, stats)`.
It runs `num_steps` (a traced int32, so any chunk length reuses ONE compiled
executable) optimiser steps in a `lax.while_loop`. Step `s` draws its batch and
loss randomness from `fold_in(state.key, s)`, inside the jitted function, so there
is no data-loader state and a restored checkpoint replays the run bit for bit.

A step whose loss, gradient norm or updated parameters are not all finite is not
applied: the loop stops and `stats["failed"]` is set, leaving `state` at the last
good step (so a checkpoint can never hold non-finite parameters).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fm.data.base import BatchFn
from fm.train.state import TrainState

__all__ = ["make_multi_step", "finite"]


def finite(tree) -> jax.Array:
  """True iff every element of every array in `tree` is finite (one fused reduction)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_multi_step(loss_fn, optimizer: optax.GradientTransformation, batch_fn: BatchFn,
                    ema_decay: float, data_sharding: jax.sharding.Sharding | None = None):
  """Builds the (unjitted) multi-step function; `jax.jit(f, donate_argnums=0)` it.

  Args:
    loss_fn: `loss_fn(params, key, *batch) -> (loss, aux)` with aux a dict of scalars;
      `key` is the step's loss key (the model's dropout may fold its own stream from it).
    optimizer: optax transformation.
    batch_fn: `batch_fn(key, data) -> batch`, `(x0, x1)` or, labelled, `(x0, x1, y1)`.
    ema_decay: EMA decay of `ema_params`.
    data_sharding: optional sharding of the batch (data parallelism over a mesh).
  """
  def one_step(state: TrainState, data):
    key = jax.random.fold_in(state.key, state.step)
    k_data, k_loss = jax.random.split(key)
    batch = batch_fn(k_data, data)
    if data_sharding is not None:
      batch = tuple(jax.lax.with_sharding_constraint(b, data_sharding) for b in batch)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, k_loss, *batch)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & finite(params)
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                 state.ema_params, params)
    new = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return new, ok, metrics

  def multi_step(state: TrainState, num_steps: jax.Array, data=None):
    _, _, metric_shapes = jax.eval_shape(one_step, state, data)
    sums = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

    def cond(carry):
      i, _, failed, _ = carry
      return (i < num_steps) & ~failed

    def body(carry):
      i, state, _, sums = carry
      state, ok, metrics = one_step(state, data)
      sums = jax.tree_util.tree_map(lambda s, m: s + jnp.where(ok, m, 0.0), sums, metrics)
      return i + 1, state, ~ok, sums

    init = (jnp.zeros((), jnp.int32), state, jnp.zeros((), bool), sums)
    i, state, failed, sums = jax.lax.while_loop(cond, body, init)
    count = i - failed.astype(jnp.int32)
    stats = {"sums": sums, "count": count, "failed": failed, "step": state.step}
    return state, stats

  return multi_step
