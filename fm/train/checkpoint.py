"""Orbax checkpoints of the whole `TrainState` under `workdir/checkpoints/<step>`.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed at any moment leaves only whole checkpoints behind.
A checkpoint damaged afterwards (disk, copying) is found by
`restore_newest_readable`, which falls back to the newest one that reads.
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import sys
import time

__all__ = ["Checkpointer", "latest_step", "all_steps", "checkpoint_dir", "restore_newest_readable",
           "set_aside", "UNREADABLE_DIR"]

UNREADABLE_DIR = "unreadable_checkpoints"


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
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow to import; not needed to list steps)
    self._ocp = ocp
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
    self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores into the structure, dtypes and shardings of `abstract_state`.

    A checkpoint that cannot be read raises its orbax / tensorstore error; the
    error's stragglers (callbacks of reads still in flight, which print
    tracebacks of a closed event loop) are drained silently first.
    """
    step = self._manager.latest_step() if step is None else step
    import jax  # pylint: disable=g-import-not-at-top
    ocp = self._ocp
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception:
      _drain_quietly()
      raise

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _drain_quietly(seconds: float = 0.5) -> None:
  """Lets the failed restore's pending reads finish with their noise (tracebacks, asyncio logs) muted."""
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  with contextlib.redirect_stderr(io.StringIO()):
    time.sleep(seconds)
    gc.collect()


def _first_line(e: BaseException, limit: int = 160) -> str:
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."


def restore_newest_readable(workdir: str, abstract_state):
  """`(state, step, failures)`: the newest checkpoint that restores, newest first.

  `failures` lists `(step, first line of the error)` of newer checkpoints that
  could not be read (or held non-finite numbers); `state` and `step` are None
  if there is no checkpoint or none reads.
  """
  from fm.train import step as step_lib  # pylint: disable=g-import-not-at-top
  steps = all_steps(workdir)
  failures = []
  if not steps:
    return None, None, failures
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    for step in reversed(steps):
      try:
        state = ckpt.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((step, _first_line(e)))
        continue
      if not bool(step_lib.finite(state)):
        failures.append((step, "it holds non-finite numbers"))
        continue
      return state, step, failures
  finally:
    ckpt.close()
  return None, None, failures


def set_aside(workdir: str, step: int) -> str:
  """Moves checkpoint `step` out of `checkpoints/` to `unreadable_checkpoints/`; returns the new path."""
  directory = os.path.join(os.path.abspath(workdir), UNREADABLE_DIR)
  os.makedirs(directory, exist_ok=True)
  target, i = os.path.join(directory, str(step)), 1
  while os.path.exists(target):
    target, i = os.path.join(directory, f"{step}.{i}"), i + 1
  os.replace(os.path.join(checkpoint_dir(workdir), str(step)), target)
  return target
