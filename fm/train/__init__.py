"""Training: state, jitted multi-step, orbax checkpoints, the loop, reflow pairs, the workdir.

`fm.experiment.train_and_evaluate` assembles a run (`fm.recipe`) and calls the loop.

Submodules and names are imported on first use, so validating a config does
not import orbax or the loop.
"""
from __future__ import annotations

import importlib

__all__ = ["checkpoint", "loop", "partitioning", "reflow", "state", "step", "workdir", "Preempted",
           "TrainingError", "TrainState"]

_NAMES = {"Preempted": "loop", "TrainingError": "loop", "TrainState": "state"}


def __getattr__(name: str):
  if name in _NAMES:
    value = getattr(importlib.import_module(f"fm.train.{_NAMES[name]}"), name)
  elif name in __all__:
    value = importlib.import_module(f"fm.train.{name}")
  else:
    raise AttributeError(f"module 'fm.train' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(list(globals()) + __all__)
