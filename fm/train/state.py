"""`TrainState`: everything a training run needs to continue exactly.

A flax struct (a pytree): `step` `[]` int32, `params`, `ema_params`, optax
`opt_state` and the run's base PRNG `key` (raw `uint32[2]`). The key never
changes; step `s` uses `fold_in(key, s)`, so a restored state replays the same
randomness as an uninterrupted run.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "make_optimizer", "make_schedule", "create"]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  key: jax.Array


def make_schedule(lr: float, steps: int, schedule: str = "constant", warmup_steps: int = 0):
  """Linear warmup from 0 over `warmup_steps`, then constant or cosine (to 0 at `steps`).

  The schedule depends on `steps` only for "cosine", so raising `train.steps`
  to continue a constant-schedule run leaves the computation unchanged.
  """
  if schedule == "constant":
    sched = optax.constant_schedule(lr)
    if warmup_steps:
      sched = optax.join_schedules(
          [optax.linear_schedule(0.0, lr, warmup_steps), sched], [warmup_steps])
  elif schedule == "cosine":
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(steps, warmup_steps + 1))
  else:
    raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine")
  return sched


def make_optimizer(lr: float, steps: int, optimizer: str = "adam", schedule: str = "constant",
                   warmup_steps: int = 0, grad_clip: float = 0.0,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam(W) with the learning rate of `make_schedule`, after optional global-norm clipping."""
  sched = make_schedule(lr, steps, schedule, warmup_steps)
  if optimizer == "adam":
    opt = optax.adam(sched)
  elif optimizer == "adamw":
    opt = optax.adamw(sched, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: adam, adamw")
  if grad_clip > 0:
    opt = _clipped(opt, grad_clip)
  return opt


def _clipped(opt: optax.GradientTransformation, max_norm: float) -> optax.GradientTransformation:
  """`opt` applied to gradients clipped to global norm `max_norm`.

  Clipping is stateless, so the state is `opt`'s own: turning clipping on or
  off (or changing `train.grad_clip` on resume) keeps checkpoints restorable.
  """
  clip = optax.clip_by_global_norm(max_norm)

  def update(grads, state, params=None):
    grads, _ = clip.update(grads, clip.init(grads))
    return opt.update(grads, state, params)

  return optax.GradientTransformation(opt.init, update)


def create(init_fn, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  """Initial state; `init_fn(key) -> params`."""
  key = jax.random.PRNGKey(seed)
  init_key, run_key = jax.random.split(key)
  params = init_fn(init_key)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      ema_params=jax.tree_util.tree_map(jnp.copy, params),
      opt_state=optimizer.init(params), key=run_key)
