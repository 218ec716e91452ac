"""Training: state, jitted multi-step, orbax checkpoints, the loop, reflow pairs, the workdir.

Submodules and names are imported on first use, so validating a config does
not import orbax or the loop.
"""
from __future__ import annotations

import importlib

__all__ = ["checkpoint", "loop", "reflow", "run", "state", "step", "workdir", "Preempted", "TrainingError",
           "TrainState", "prepare", "train", "train_and_evaluate"]

_NAMES = {"Preempted": "loop", "TrainingError": "loop", "prepare": "loop", "train": "loop",
          "train_and_evaluate": "loop", "TrainState": "state"}


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
