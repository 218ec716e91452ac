"""The one way fm writes a file: atomically, and on one process only.

Every write goes to a temporary file beside the target (same directory, so the
same file system), is flushed and fsynced, then renamed over the target with
`os.replace`: a reader sees the old file or the new one, never a part of one. On
any failure (a full disk, a serialisation error, Ctrl-C) the temporary file is
removed and the target is left as it was.

With several processes (`jax.distributed`) every process computes the same
results, and only process 0 writes shared files (`is_writer`). A file that each
process owns (a per-process log) is written with `per_process=True`. Every
`write_*` returns whether this process wrote.

    files.write_json(os.path.join(workdir, "eval.json"), result)
    files.append_jsonl(os.path.join(workdir, "eval.jsonl"), record)
    files.write_npz(out, samples=x, nfe=nfe)
    files.write_png(path, image_u8)          # [H, W, C] or [H, W] uint8
    with files.atomic(path) as f:            # anything that writes to a binary file object
      np.save(f, array)
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from typing import Any, BinaryIO, Iterator

__all__ = ["is_writer", "atomic", "write_bytes", "write_text", "write_json", "append_jsonl", "read_jsonl",
           "write_npz", "write_png"]


def is_writer() -> bool:
  """True on the one process that writes shared files: process 0 (any process before JAX is imported).

  `jax.distributed` needs JAX imported first, so a process that has not imported
  it is a single process; checking without importing keeps the CLI's fast paths fast.
  """
  if "jax" not in sys.modules:
    return True
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
  """0o666 less the umask: the mode `open(path, "w")` would give a new file (mkstemp gives 0o600)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def atomic(path: str | os.PathLike, *, per_process: bool = False) -> Iterator[BinaryIO]:
  """A binary file object whose content replaces `path` when the block ends without an exception.

  For code that writes to a file object (`np.save`, a download). A process other
  than 0 gets a sink that keeps nothing (`os.devnull`) unless `per_process`, so
  the caller's code is the same on every process. On an exception the temporary
  file is removed and the exception re-raised.
  """
  path = os.fspath(path)
  if not per_process and not is_writer():
    with open(os.devnull, "wb") as sink:
      yield sink
    return
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    os.fchmod(fd, _file_mode())
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes, *, per_process: bool = False) -> bool:
  """Writes `data` to `path` atomically (process 0 only unless `per_process`)."""
  if not per_process and not is_writer():
    return False
  with atomic(path, per_process=True) as f:
    f.write(data)
  return True


def write_text(path: str | os.PathLike, text: str, *, per_process: bool = False) -> bool:
  """Writes `text` (UTF-8) to `path` atomically (process 0 only unless `per_process`)."""
  return write_bytes(path, text.encode("utf-8"), per_process=per_process)


def _plain(x):
  """numpy / jax scalars and arrays -> Python numbers and lists for JSON."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = np.asarray(x)
  if a.dtype == object:
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")
  return a.item() if a.ndim == 0 else a.tolist()


def write_json(path: str | os.PathLike, obj: Any, *, per_process: bool = False, indent: int | None = 2,
               sort_keys: bool = False) -> bool:
  """Writes `obj` as JSON (numpy values as numbers and lists) atomically, process 0 only unless `per_process`.

  The object is serialised before any file is touched, so an unserialisable one changes nothing.
  """
  if not per_process and not is_writer():
    return False
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_plain)
  return write_text(path, text + "\n", per_process=True)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any], *, per_process: bool = False,
                 sort_keys: bool = False) -> bool:
  """Appends `record` as one JSON line (one `write`, then fsync); process 0 only unless `per_process`.

  An append cannot be made atomic by renaming; a line cut off by a kill is what
  `read_jsonl` skips.
  """
  if not per_process and not is_writer():
    return False
  line = (json.dumps(record, default=_plain, sort_keys=sort_keys) + "\n").encode("utf-8")
  fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, _file_mode())
  try:
    view = memoryview(line)
    while view:
      view = view[os.write(fd, view):]
    os.fsync(fd)
  finally:
    os.close(fd)
  return True


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The JSON objects of a JSON-lines file in order ([] if it does not exist); a line that does not
  parse (cut off by a kill mid-append) is skipped."""
  path = os.fspath(path)
  if not os.path.exists(path):
    return []
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(row, dict):
        out.append(row)
  return out


def write_npz(path: str | os.PathLike, *, per_process: bool = False, **arrays: Any) -> bool:
  """`np.savez(path, **arrays)` atomically (the name is kept as given), process 0 only unless `per_process`."""
  if not per_process and not is_writer():
    return False
  import numpy as np  # pylint: disable=g-import-not-at-top
  with atomic(path, per_process=True) as f:
    np.savez(f, **arrays)
  return True


def write_png(path: str | os.PathLike, image: Any, *, per_process: bool = False) -> bool:
  """Writes a uint8 image `[H, W, C]` (C = 1, 3 or 4) or `[H, W]`, or a PIL image, as a PNG atomically."""
  if not per_process and not is_writer():
    return False
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not isinstance(image, Image.Image):
    a = np.asarray(image)
    if a.dtype != np.uint8:
      raise ValueError(f"write_png takes uint8 images, got {a.dtype}")
    image = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
  with atomic(path, per_process=True) as f:
    image.save(f, format="PNG")
  return True
