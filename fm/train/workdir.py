"""A run's directory: path checks, the lock, what may change on resume, config, source, history and metrics.

Layout of a workdir (besides `checkpoints/` and results):

  .lock           held (`fcntl.flock`) by the one `fm train` working in it (its process 0)
  config.json     the run's config as of the latest start (canonical: `fm.config.canonical`;
                  one of the old shape is mapped to the new one when read)
  source.json     the training data's example shape, kind, provenance and content sha256
  history.jsonl   one line per start / resume / stop: step, time, provenance and
                  every setting that changed on resume (`{"key": [old, new]}`)
  metrics.jsonl   one row per log step; a line cut off by a kill is dropped on resume

Settings that do not change what a step computes from the state it starts from
may change on resume (`RESUMABLE`): logging and checkpoint cadence, evaluation,
the learning rate and gradient clipping (the remedies for a NaN stop), and
`train.steps`, unless the steps already taken would have had another schedule.
Every such change is written to `history.jsonl`; any other change is refused.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from typing import Any, Iterator

from fm import config as config_lib
from fm.io import files

__all__ = ["RESUMABLE", "LOCK_FILE", "HISTORY_FILE", "METRICS_FILE", "check_path", "check_writable_dir", "check_run",
           "resume_changes", "check_steps", "check_free", "lock", "append_history", "read_history", "read_metrics",
           "trim_metrics", "read_config", "read_source_info", "write_source_info",
           "CONFIG_FILE", "SOURCE_FILE"]

LOCK_FILE = ".lock"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SOURCE_FILE = "source.json"

# Dotted keys (or "prefix." for a whole section) that may change when a run resumes.
RESUMABLE = ("train.steps", "train.lr", "train.grad_clip", "train.log_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.steps_per_call", "train.tensorboard", "eval.")


def _resumable(key: str) -> bool:
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def check_writable_dir(path: str, what: str) -> None:
  """ConfigError unless `path` is an existing directory this process can create files in.

  Tries to create (and removes) a temporary file, since `os.access` says yes to
  root on read-only or special file systems.
  """
  if not os.path.isdir(path):
    raise config_lib.ConfigError(f"{what} {path!r} is not a directory")
  try:
    if hasattr(os, "O_TMPFILE"):  # an unnamed file: the directory itself is not modified
      try:
        os.close(os.open(path, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return
      except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
          raise
    fd, probe = tempfile.mkstemp(prefix=".fm-write-test-", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise config_lib.ConfigError(f"{what} {path!r} is not writable ({e.strerror or e})") from e


def check_path(workdir: str, create: bool = True, what: str = "workdir") -> None:
  """ConfigError (one sentence) unless `workdir` is, or can be created as, a writable directory."""
  if not workdir:
    raise config_lib.ConfigError(f"the {what} must not be empty")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"{what} {workdir!r} is a file, not a directory")
  if not create:
    return
  ancestor = os.path.abspath(workdir)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise config_lib.ConfigError(f"{what} {workdir!r} cannot be created: {ancestor!r} is a file")
  check_writable_dir(ancestor, what if ancestor == os.path.abspath(workdir) else
                     f"{what} {workdir!r} cannot be created: directory")


def check_run(workdir: str) -> int:
  """ConfigError unless `workdir` holds a config.json and a checkpoint; returns the latest step.

  Reads only the directory (no JAX), so `fm sample` / `fm eval` answer a wrong path at once.
  """
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise config_lib.ConfigError("the workdir must not be empty")
  if not os.path.exists(workdir):
    raise config_lib.ConfigError(f"workdir {workdir!r} does not exist")
  if not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir!r} is a file, not a run directory")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise config_lib.ConfigError(f"workdir {workdir!r} has no config.json (not an fm training run)")
  step = checkpoint.latest_step(workdir)
  if step is None:
    raise config_lib.ConfigError(f"workdir {workdir!r} has no checkpoint yet; run fm train first")
  return step


def resume_changes(saved: dict[str, Any], config: dict[str, Any], workdir: str,
                   allowed: tuple[str, ...] = ()) -> dict[str, list]:
  """`{key: [old, new]}` of the settings that differ; ConfigError if one may not change on resume.

  `allowed`: keys that may change on this resume besides `RESUMABLE` (data.path when
  the data there has the run's content).
  """
  old, new = config_lib.flatten(saved), config_lib.flatten(config)
  changed = config_lib.diff(saved, config)
  fixed = [k for k in changed if not _resumable(k) and k not in allowed]
  if fixed:
    k = fixed[0]
    raise config_lib.ConfigError(
        f"workdir {workdir!r} holds a run with a different config ({k}={old.get(k)!r}, now {new.get(k)!r}"
        f"{' and more' if len(fixed) > 1 else ''}); use a new workdir, as on resume only "
        f"{', '.join(r + '*' if r.endswith('.') else r for r in RESUMABLE)} may change")
  return {k: [old.get(k), new.get(k)] for k in changed}


def check_steps(saved: dict[str, Any], config: dict[str, Any], latest: int | None, workdir: str) -> None:
  """ConfigError if the new `train.steps` is below the latest checkpoint, or changes the schedule of
  the steps already taken (a schedule that decays to 0 at `train.steps`, such as cosine)."""
  steps, old_steps = config["train"]["steps"], saved["train"]["steps"]
  if latest is None or latest == 0:
    return
  if steps < latest:
    raise config_lib.ConfigError(
        f"workdir {workdir!r} has a checkpoint at step {latest}, beyond train.steps={steps}; train.steps "
        f"may not go below {latest} (use a new workdir for a shorter run)")
  if steps == old_steps:
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fm.train import state as state_lib  # pylint: disable=g-import-not-at-top
  tc = saved["train"]
  before = state_lib.make_schedule(tc["lr"], old_steps, tc["schedule"], tc["warmup_steps"])
  after = state_lib.make_schedule(tc["lr"], steps, tc["schedule"], tc["warmup_steps"])
  taken = np.arange(latest)
  if not np.array_equal(np.asarray(before(taken)), np.asarray(after(taken))):
    raise config_lib.ConfigError(
        f"train.steps may not change from {old_steps} to {steps} in workdir {workdir!r}: with "
        f"train.schedule={tc['schedule']!r} the learning rate of the {latest} steps already taken "
        f"depends on train.steps; use a new workdir")


# errnos of a file system that does not implement flock (Lustre mounted `noflock`, NFS mounted
# without a lock manager): fm then warns and runs unlocked (docs/reliability.md).
_NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _try_flock(fd: int) -> str | None:
  """None if this process now holds the exclusive flock on `fd`; else who holds it ("pid N on HOST").

  Raises OSError with an errno in `_NO_FLOCK` where the file system has no flock.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    return _holder(fd)
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
  return None


def _holder(fd: int) -> str:
  """Who holds the lock, as its file says: "pid N on HOST" ("pid N" from an fm before hosts were named)."""
  holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "?"
  return f"pid {holder}" if holder.isdigit() else holder


def _process_count() -> int:
  """`jax.process_count()` where JAX is already imported (a plain process never imports it here)."""
  import sys  # pylint: disable=g-import-not-at-top
  jax = sys.modules.get("jax")
  return jax.process_count() if jax is not None else 1


def check_free(workdir: str) -> None:
  """ConfigError if another fm train holds `workdir` now (a probe; `lock` is what keeps it).

  Lets a single-process `fm train` refuse a busy workdir before it spends
  minutes loading data. Takes and drops the flock at once; touches nothing when
  `workdir/.lock` does not exist.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.isfile(path):
    return
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return   # `lock` will say why
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise config_lib.ConfigError(_busy(workdir, _holder(fd))) from None
  finally:
    os.close(fd)


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top  (only reached with several processes: imported)
  return jax.process_index()


def _agree(refusal: str | None) -> str | None:
  """Process 0's `refusal` (a sentence, or None) on every process (a broadcast; several processes only)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.zeros(1025, np.uint8)
  if refusal is not None:
    raw = refusal.encode()[:1024]
    data[0], data[1:1 + len(raw)] = 1, np.frombuffer(raw, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(data[1:]).rstrip(b"\0").decode(errors="replace") if data[0] else None


def _refusal(workdir: str, fd: int) -> str | None:
  """Takes the flock on `fd`: None if taken (or the file system has none: a warning), else why not."""
  try:
    holder = _try_flock(fd)
  except OSError as e:
    if e.errno not in _NO_FLOCK:
      return f"workdir {workdir!r} cannot be locked ({e.strerror or e}); check that it is writable"
    import logging  # pylint: disable=g-import-not-at-top
    logging.getLogger("fm").warning(
        "warning: the file system of workdir %r has no flock (%s), so nothing stops a second fm train "
        "from writing into it; run one at a time", workdir, e.strerror or e)
    return None
  if holder is None:
    return None
  return _busy(workdir, holder)


def _busy(workdir: str, holder: str) -> str:
  return (f"workdir {workdir!r} is in use by another fm train ({holder}); wait for it to finish "
          f"or stop it, then re-run to resume")


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive `flock` on `workdir/.lock` for one run; ConfigError at once if another run holds it.

  One run of several processes (`jax.distributed`) is one holder: process 0
  takes the lock and broadcasts the outcome, so every process goes on, or every
  process stops with the same sentence. The lock goes with the process (a
  killed run leaves no stale lock); the file stays. Where the file system has
  no flock (`_NO_FLOCK`) fm warns and runs without the lock.
  """
  count = _process_count()
  fd = None
  try:
    refusal = None
    if count == 1 or _process_index() == 0:
      try:
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        refusal = _refusal(workdir, fd)
      except OSError as e:
        refusal = f"workdir {workdir!r} cannot be locked ({e.strerror or e}); check that it is writable"
    if count > 1:
      refusal = _agree(refusal)
    if refusal is not None:
      raise config_lib.ConfigError(refusal)
    yield
  finally:
    if fd is not None:
      os.close(fd)   # releases the lock


def append_history(workdir: str, event: str, step: int, **fields: Any) -> None:
  """Appends `{"event", "step", "time", **fields}` as one line to `history.jsonl` (process 0)."""
  row = {"event": event, "step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
  files.append_jsonl(os.path.join(workdir, HISTORY_FILE), row, sort_keys=True)


def _read_lines(path: str) -> list[tuple[str, dict[str, Any]]]:
  """`(line, row)` of a JSON-lines file; a line that does not parse (cut off by a kill) is skipped."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict):
        out.append((line if line.endswith("\n") else line + "\n", row))
  return out


def read_history(workdir: str) -> list[dict[str, Any]]:
  return files.read_jsonl(os.path.join(workdir, HISTORY_FILE))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of `metrics.jsonl`, skipping a truncated last line."""
  return files.read_jsonl(os.path.join(workdir, METRICS_FILE))


def trim_metrics(workdir: str, max_step: int) -> None:
  """Rewrites `metrics.jsonl` (process 0) without rows past `max_step` (replayed after a resume) or cut-off lines."""
  path = os.path.join(workdir, METRICS_FILE)
  if not files.is_writer() or not os.path.exists(path):
    return
  lines = [line for line, row in _read_lines(path) if row.get("step", 0) <= max_step]
  files.write_text(path, "".join(lines))


def read_config(workdir: str):
  """The run's config.json as a canonical `ConfigDict` (an old-shape file mapped to the new shape)."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise config_lib.ConfigError(f"{path} cannot be read ({e}); restore it or use a new workdir") from e
  return config_lib.from_dict(config_lib.canonical(saved))


def write_source_info(workdir: str, source) -> None:
  """Records the training data's shape, kind, provenance, identity and classes in `workdir/source.json`.

  `sha256` is the content key of the data (`fm.data.identity`), by which a
  resumed run recognises its data at another path; `skipped` and `converted`
  are what loading it skipped or converted (`fm.data.folder`). Data with
  labels add `classes` (names, index = label) and `class_probs` (their
  frequencies in the training data: what conditional sampling draws from).
  """
  info = {"name": source.name, "shape": list(source.shape), "kind": source.kind,
          "description": source.description, **getattr(source, "info", {})}
  if getattr(source, "classes", None) is not None:
    info["classes"] = list(source.classes)
    info["class_probs"] = list(source.class_probs)
  files.write_json(os.path.join(workdir, SOURCE_FILE), info, sort_keys=True)   # process 0


def read_source_info(workdir: str) -> dict[str, Any]:
  """`source.json` of a run (a 2D toy run from before it existed: shape [2], kind points)."""
  path = os.path.join(workdir, SOURCE_FILE)
  if not os.path.isfile(path):
    return {"name": "toy", "shape": [2], "kind": "points", "description": "fm.data.toys (generated)"}
  with open(path) as f:
    return json.load(f)
