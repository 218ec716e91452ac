"""Where a number came from: fm's version and git commit, the JAX version and the device.

`record()` is written to `workdir/provenance.json` and to every line of
`history.jsonl` when training starts or resumes, into `eval.json`, and into the
`.npz` files of samples and reflow pairs, so any result can be traced to the
code and hardware that made it.
"""
from __future__ import annotations

import functools
import os
import subprocess
from typing import Any

__all__ = ["record", "git_commit", "commit_label", "summary", "npz_fields"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _git(*args: str, cwd: str) -> str | None:
  try:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def git_commit(path: str = _PACKAGE_DIR) -> tuple[str, bool | None]:
  """`(commit, dirty)` of the git checkout holding `path`; `("unknown", None)` outside one (e.g. a wheel)."""
  commit = _git("rev-parse", "HEAD", cwd=path)
  if not commit:
    return "unknown", None
  status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", cwd=path)
  return commit, None if status is None else bool(status)


def commit_label() -> str:
  """`git_commit()` as one string: `<sha>`, `<sha>-dirty` when fm's files differ from it, or "unknown"."""
  commit, dirty = git_commit()
  return commit + ("-dirty" if dirty else "")


def record() -> dict[str, Any]:
  """`{"fm_version", "git_commit", "git_dirty", "jax_version", "backend", "device_kind", "device_count"}`.

  `git_dirty` says whether fm's files differed from the commit (None if unknown).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from fm import __version__  # pylint: disable=g-import-not-at-top
  commit, dirty = git_commit()
  return {"fm_version": __version__, "git_commit": commit, "git_dirty": dirty, "jax_version": jax.__version__,
          "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
          "device_count": jax.device_count()}


def summary(prov: dict[str, Any] | None = None) -> str:
  """One line: "fm 0.1.0 (commit 1234abcd, modified), JAX 0.10.2 on 1 x cpu"."""
  p = prov or record()
  commit = p["git_commit"][:8] + (", modified" if p.get("git_dirty") else "")
  return f"fm {p['fm_version']} (commit {commit}), JAX {p['jax_version']} on {p['device_count']} x {p['device_kind']}"


def npz_fields() -> dict[str, str]:
  """`record()` as strings under `provenance_*` keys, for `np.savez` (loads without pickle)."""
  return {f"provenance_{k}": str(v) for k, v in record().items()}
