"""A full disk: found in any exception (Python's OSError, orbax / tensorstore errors), reported in one sentence.

    try:
      manager.save(...)
    except Exception as e:
      if not disk.is_full(e):
        raise
      raise disk.DiskFull(directory, "writing checkpoint 40", needed=nbytes) from None

`DiskFull` is what the CLI turns into `fm: error: <sentence>` and exit status 1
(a fault, not bad input). Whoever raises it has already removed its temporaries.
"""
from __future__ import annotations

import errno
import os
import shutil

__all__ = ["DiskFull", "is_full", "chain", "free_bytes", "human"]

_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax) words ENOSPC / EDQUOT inside its ValueError.
_TEXTS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


def chain(e: BaseException):
  """`e`, its causes and contexts, and the members of exception groups (each once)."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]


def is_full(e: BaseException) -> bool:
  """Whether `e` (or anything in its chain) is a write that failed for lack of space or quota."""
  for x in chain(e):
    if isinstance(x, OSError) and x.errno in _ERRNOS:
      return True
    if any(t in str(x) for t in _TEXTS):
      return True
  return False


def free_bytes(path: str) -> int | None:
  """Free bytes on the file system of `path` (or of its nearest existing parent); None if unknown."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


class DiskFull(RuntimeError):
  """No space (or quota) left while writing under `path`; the message is one sentence."""

  def __init__(self, path: str, what: str, needed: int | None = None):
    free = free_bytes(path)
    need = f"it needs about {human(needed)}" if needed else "it needs more space"
    have = f", {human(free)} free" if free is not None else ""
    super().__init__(f"no space left on the disk of {path!r} while {what} ({need}{have}); free some space "
                     f"(or use a workdir on another disk) and re-run the same command")
    self.path, self.needed = path, needed
