"""A run's pieces from its config, and loading a run's EMA parameters from a workdir.

`build(config, shape)` gives the model, method, optimizer and initial-state
function that training, sampling, evaluation and reflow all share. A workdir's
`config.json` and `source.json` (the example shape, kind and provenance of the
training data, written when training starts) are enough to rebuild the exact
state structure for restoring, without loading the data.
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
from fm.train import checkpoint, partitioning, state as state_lib

__all__ = ["Run", "build", "load", "check_workdir", "velocity", "model_kwargs", "method_kwargs",
           "read_source_info", "write_source_info", "loss_fn", "load_config", "SOURCE_FILE"]

SOURCE_FILE = "source.json"


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.ConfigDict
  shape: tuple[int, ...]
  model: Any
  method: methods.Method
  optimizer: optax.GradientTransformation
  init_state: Callable[[], state_lib.TrainState]


def _hashable(v):
  return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's options: `config.model` without `name` (lists made tuples, so the module hashes)."""
  return {k: _hashable(v) for k, v in config_lib.to_dict(config.model).items() if k != "name"}


def method_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`methods.make` arguments: sigma, time sampler (+ its options), coupling options that are set."""
  d = config_lib.to_dict(config)
  time_kwargs = {k: v for k, v in d.get("time", {}).items() if v is not None}
  coupling = {k: v for k, v in d.get("coupling", {}).items() if v is not None}
  return dict(sigma=d.get("sigma"), time_sampler=d.get("time_sampler", "uniform"),
              time_kwargs=time_kwargs, **coupling)


def build(config: ml_collections.ConfigDict, shape: tuple[int, ...] = (2,), mesh=None) -> Run:
  """Model, method, optimizer and `init_state()` for a validated config and example shape.

  `mesh`: the data-parallel mesh training shards its batch over (the method's
  coupling then pairs per `coupling.scope`); None for sampling and evaluation.
  """
  shape = tuple(int(s) for s in shape)
  model = models.make(config.model.name, **model_kwargs(config))
  method = methods.make(config.method, mesh=mesh, **method_kwargs(config))
  tc = config.train
  optimizer = state_lib.make_optimizer(
      tc.lr, tc.steps, tc.optimizer, tc.schedule, tc.warmup_steps, tc.grad_clip, tc.weight_decay)

  def init_fn(key):
    return model.init(key, jnp.zeros((1,)), jnp.zeros((1, *shape)))

  return Run(config, shape, model, method, optimizer,
             lambda: state_lib.create(init_fn, optimizer, config.seed))


def loss_fn(run: Run):
  """`loss_fn(params, key, x0, x1)` of the run's method; dropout draws from `fold_in(key, 0xD0)`."""
  def f(params, key, x0, x1):
    k_dropout = jax.random.fold_in(key, 0xD0)

    def apply_fn(p, t, x):
      return run.model.apply(p, t, x, train=True, rngs={"dropout": k_dropout})
    return run.method.loss(apply_fn, params, key, x0, x1)
  return f


def write_source_info(workdir: str, source) -> None:
  """Records the training data's shape, kind, provenance and identity in `workdir/source.json`.

  `sha256` is the content key of the data (`fm.data.identity`), by which a
  resumed run recognises its data at another path; `skipped` and `converted`
  are what loading it skipped or converted (`fm.data.folder`).
  """
  info = {"name": source.name, "shape": list(source.shape), "kind": source.kind,
          "description": source.description, **source.info}
  path = os.path.join(workdir, SOURCE_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
  os.replace(path + ".tmp", path)


def read_source_info(workdir: str) -> dict[str, Any]:
  """`source.json` of a run (a 2D toy run from before it existed: shape [2], kind points)."""
  path = os.path.join(workdir, SOURCE_FILE)
  if not os.path.isfile(path):
    return {"name": "toy", "shape": [2], "kind": "points", "description": "fm.data.toys (generated)"}
  with open(path) as f:
    return json.load(f)


def check_workdir(workdir: str) -> int:
  """Raises ConfigError unless `workdir` holds a config.json and a checkpoint; returns its step."""
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.check_run(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(workdir: str, step: int | None = None, mesh=None) -> tuple[Run, Any, int]:
  """`(run, ema_params, step)` of checkpoint `step` (default: the latest) in `workdir`.

  The parameters are restored replicated on every device of `mesh` (default:
  all devices of all processes), whatever the device count of the training run.
  The latest checkpoint removed while it is read (a running `fm train` rotating
  its checkpoints) is not an error: the newest that exists then is read.
  """
  latest = check_workdir(workdir)
  asked, step = step, latest if step is None else step
  if step not in checkpoint.all_steps(workdir):
    raise config_lib.ConfigError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                                 f"saved steps: {', '.join(map(str, checkpoint.all_steps(workdir)))}")
  run = build(load_config(workdir), read_source_info(workdir)["shape"])
  mesh = partitioning.make_mesh() if mesh is None else mesh
  abstract = partitioning.abstract_replicated(jax.eval_shape(run.init_state), mesh)
  for _ in range(5):   # a running fm train may rotate the checkpoint away while it is read
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      state = ckpt.restore(abstract, step)
      break
    except Exception as e:  # pylint: disable=broad-except
      steps = checkpoint.all_steps(workdir)
      if step not in steps and steps:   # rotated away, not damaged
        if asked is not None:
          raise config_lib.ConfigError(f"checkpoint {step} in {workdir!r} was removed while it was read (a "
                                       f"running fm train keeps only its newest); saved steps now: "
                                       f"{', '.join(map(str, steps))}") from None
        step = steps[-1]
        continue
      others = [s for s in steps if s != step]
      hint = f"; pass --step with one of the other saved steps: {', '.join(map(str, others))}" if others else ""
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
      raise config_lib.ConfigError(f"checkpoint {step} in {workdir!r} cannot be read ({first}){hint}") from None
    finally:
      ckpt.close()
  else:
    raise config_lib.ConfigError(f"the checkpoints in {workdir!r} were rotated away five times while being "
                                 f"read; pass --step, or wait for fm train to finish")
  return run, state.ema_params, step


def velocity(model, params) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`v(t, x)` with scalar t, as the solvers expect (deterministic: no dropout)."""
  def v(t, x):
    return model.apply(params, jnp.full((x.shape[0],), t, x.dtype), x)
  return v
