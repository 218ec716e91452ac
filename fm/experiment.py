"""`fm train` as a library call: resolve the config once, assemble the run, train, evaluate.

    from fm import experiment
    result = experiment.train_and_evaluate(config, "runs/ot")

This is the one place that wires the trainer (`fm.train.loop`, which imports no
evaluator) to its periodic evaluators and to the end-of-training evaluation
(`fm.evaluate`); both sides build runs through `fm.recipe`.
"""
from __future__ import annotations

import logging
import os

import ml_collections

from fm import config as config_lib

__all__ = ["prepare", "train", "train_and_evaluate"]

log = logging.getLogger("fm")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The resolved config (`fm.recipe.resolve`: every check, once) after checking its fit with `workdir`."""
  config_lib.check(config)   # before importing JAX: bad numbers are answered at once
  from fm import recipe  # pylint: disable=g-import-not-at-top
  from fm.train import loop  # pylint: disable=g-import-not-at-top
  from fm.evaluate import registry  # pylint: disable=g-import-not-at-top
  config = recipe.resolve(config)
  registry.check_config(config)   # eval.metrics: names of the run kind's metrics
  return loop.prepare(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str, loaded):
  """Trains a resolved, prepared config inside the workdir lock on the `loaded` data; returns
  `(state, start step)`."""
  from fm import evaluate, recipe  # pylint: disable=g-import-not-at-top
  from fm.train import loop, partitioning  # pylint: disable=g-import-not-at-top
  source, teacher_step = recipe.make_source(config, workdir, loaded)
  # Data parallelism (fm.train.partitioning): batch sharded over every device, state replicated.
  mesh = partitioning.make_mesh()
  run = recipe.build(config, source.shape, mesh=mesh)
  return loop.train(config, workdir, run, recipe.loss_fn(run), source, mesh,
                    make_evaluators=lambda: evaluate.periodic(run, source, config, workdir),
                    teacher_step=teacher_step)


def train(config: ml_collections.ConfigDict, workdir: str):
  """Trains to `config.train.steps` (resuming from the workdir); returns the final `TrainState`."""
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from fm import recipe  # pylint: disable=g-import-not-at-top
  config = prepare(config, workdir)
  loaded = recipe.load_data(config)   # data and model checks before the workdir is created or locked
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock(workdir):
    return _train(config, workdir, loaded)[0]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains, then (if `config.eval.at_end`) evaluates the EMA model into `eval.json`.

  A finished run whose eval.json is of its last step and current eval settings
  is not evaluated again (`fm eval` does that); its eval.json is returned.
  """
  config = prepare(config, workdir)
  import jax  # pylint: disable=g-import-not-at-top
  from fm import evaluate, recipe  # pylint: disable=g-import-not-at-top
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  loaded = recipe.load_data(config)   # data and model checks before the workdir is created or locked
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock(workdir):
    state, start = _train(config, workdir, loaded)
    if not config.eval.get("at_end", True):
      return state
    if start >= config.train.steps:
      previous = evaluate.up_to_date(workdir, int(jax.device_get(state.step)))
      if previous is not None:
        log.info("%s: eval.json is up to date (fm eval evaluates again)", workdir)
        return previous
    result = evaluate.evaluate_workdir(workdir)
    for warning in result.get("warnings", []):
      log.warning("warning: %s", warning)
    return result
