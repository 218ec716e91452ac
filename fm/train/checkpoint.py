"""Orbax checkpoints of the whole `TrainState` under `workdir/checkpoints/<step>`.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed at any moment leaves only whole checkpoints behind.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "latest_step", "all_steps", "checkpoint_dir"]


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def all_steps(workdir: str) -> list[int]:
  """Finished checkpoint steps, ascending; does not create anything."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def latest_step(workdir: str) -> int | None:
  """The latest finished checkpoint step, or None; does not create anything."""
  steps = all_steps(workdir)
  return steps[-1] if steps else None


class Checkpointer:
  """Saves and restores `TrainState`s; keeps the last `max_to_keep`."""

  def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
    if read_only:
      options = ocp.CheckpointManagerOptions(create=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Saves `state` as checkpoint `step` (synchronously, so the caller may donate it next); no-op if it exists."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores into the structure, dtypes and shardings of `abstract_state`."""
    step = self._manager.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
