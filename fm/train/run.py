"""A run's pieces from its config, and loading a run's EMA parameters from a workdir.

`build(config)` gives the model, method, optimizer and initial-state function
that training, sampling, evaluation and reflow all share, so a workdir's
`config.json` is enough to rebuild the exact state structure for restoring.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fm import methods, models
from fm import config as config_lib
from fm.train import checkpoint, state as state_lib

__all__ = ["Run", "build", "load", "check_workdir", "velocity"]


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.ConfigDict
  model: Any
  method: methods.Method
  optimizer: optax.GradientTransformation
  init_state: Callable[[], state_lib.TrainState]


def build(config: ml_collections.ConfigDict) -> Run:
  """Model, method, optimizer and `init_state()` for a validated config."""
  model = models.make(config.model.name, dim=2, width=config.model.width,
                      depth=config.model.depth, activation=config.model.activation)
  method = methods.make(config.method, sigma=config.sigma, time_sampler=config.time_sampler)
  tc = config.train
  optimizer = state_lib.make_optimizer(
      tc.lr, tc.steps, tc.optimizer, tc.schedule, tc.warmup_steps, tc.grad_clip, tc.weight_decay)

  def init_fn(key):
    return model.init(key, jnp.zeros((1,)), jnp.zeros((1, 2)))

  return Run(config, model, method, optimizer,
             lambda: state_lib.create(init_fn, optimizer, config.seed))


def check_workdir(workdir: str) -> int:
  """Raises ConfigError unless `workdir` holds a config.json and a checkpoint; returns its step."""
  if not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir!r} does not exist")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise config_lib.ConfigError(f"workdir {workdir!r} has no config.json (not an fm training run)")
  step = checkpoint.latest_step(workdir)
  if step is None:
    raise config_lib.ConfigError(f"workdir {workdir!r} has no checkpoint yet; run fm train first")
  return step


def load(workdir: str) -> tuple[Run, Any, int]:
  """`(run, ema_params, step)` of the latest checkpoint in `workdir`."""
  step = check_workdir(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  run = build(config)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  state = ckpt.restore(jax.eval_shape(run.init_state), step)
  ckpt.close()
  return run, state.ema_params, step


def velocity(model, params) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`v(t, x)` with scalar t, as the solvers expect."""
  def v(t, x):
    return model.apply(params, jnp.full((x.shape[0],), t, x.dtype), x)
  return v
