"""Provenance of evaluation results and the append-only `workdir/eval.jsonl`.

Every number `fm eval` computes is one JSON line in `eval.jsonl`: the metric and
its value with how it was obtained (checkpoint step, data source, seed, solver,
tolerances or steps, NFE, sample count, weights file hash, fm's git commit).
Lines are only ever appended (`fm.io.files.append_jsonl`, by process 0), so earlier results survive.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import os
from typing import Any

from fm import provenance
from fm.io import files

__all__ = ["EVAL_FILE", "append", "read", "file_sha256", "solver_fields", "stamp"]

EVAL_FILE = "eval.jsonl"


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns   # cache key only: a rewritten file is hashed again
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes (memoised per path, size and mtime)."""
  path = os.path.abspath(os.fspath(path))
  st = os.stat(path)
  return _sha256(path, st.st_size, st.st_mtime_ns)


def solver_fields(solver: str, rtol: float | None, atol: float | None, steps: int | None) -> dict[str, Any]:
  """`{"solver", "rtol", "atol"}` for adaptive solvers, `{"solver", "steps"}` for fixed-step ones."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  if solver in solvers.ADAPTIVE:
    return {"solver": solver, "rtol": rtol, "atol": atol}
  return {"solver": solver, "steps": steps}


def stamp() -> dict[str, Any]:
  """Fields every record carries: UTC time, fm's commit, the JAX device."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "fm_commit": provenance.commit_label(), "device": jax.devices()[0].device_kind}


def append(workdir: str, record: dict[str, Any]) -> str:
  """Appends `record` as one JSON line to `workdir/eval.jsonl` (process 0 only); returns the file's path."""
  path = os.path.join(workdir, EVAL_FILE)
  files.append_jsonl(path, record)
  return path


def read(workdir: str) -> list[dict[str, Any]]:
  """All records of `workdir/eval.jsonl` in the order written ([] if there is none; a cut-off line is skipped)."""
  return files.read_jsonl(os.path.join(workdir, EVAL_FILE))
