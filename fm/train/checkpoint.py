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
           "set_aside", "remove_unfinished", "UNREADABLE_DIR"]

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
    self._directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Saves `state` as checkpoint `step` (synchronously, so the caller may donate it next); no-op if it exists.

    A full disk raises `fm.io.disk.DiskFull` (one sentence naming the directory and
    the checkpoint's size) after removing the unfinished `*.orbax-checkpoint-tmp*`;
    orbax's own log lines about it are dropped. Earlier checkpoints stay, so the
    next run resumes from the newest.
    """
    if step in self._manager.all_steps():
      return
    try:
      with _held_logs() as held:
        self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
    except Exception as e:  # pylint: disable=broad-except
      from fm.io import disk  # pylint: disable=g-import-not-at-top
      if not disk.is_full(e):
        held.release()
        raise
      _drain_quietly()
      remove_unfinished(self._directory)
      import jax  # pylint: disable=g-import-not-at-top
      needed = sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(state))
      raise disk.DiskFull(self._directory, f"writing checkpoint {step}", needed=needed) from None
    held.release()

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


class _held_logs(contextlib.AbstractContextManager):
  """Holds the records orbax logs (through absl) inside the block; `release()` emits them, else dropped.

  A failed save logs a traceback per writer thread before it raises; fm reports the
  failure itself in one sentence, so those are dropped when the failure is handled.
  """

  def __init__(self):
    self._records = []
    self._logger = logging.getLogger("absl")

  def filter(self, record):
    self._records.append(record)
    return False

  def __enter__(self):
    self._logger.addFilter(self)
    return self

  def __exit__(self, *exc):
    self._logger.removeFilter(self)
    return False

  def release(self):
    for r in self._records:
      self._logger.handle(r)
    self._records = []


def remove_unfinished(directory: str) -> list[str]:
  """Removes orbax's unfinished `<step>.orbax-checkpoint-tmp*` directories under `directory`; returns them."""
  import shutil  # pylint: disable=g-import-not-at-top
  removed = []
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
  return removed


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
