"""NFE sweeps: parsing `SOLVER:V1,V2,...` and writing the table (md, csv) and the figure.

`euler:1,2,5,10` sweeps the number of steps of a fixed-step solver (NFE = steps x
stages: 1 euler, 2 midpoint / heun, 4 rk4); `dopri5:1e-2,1e-3` sweeps the
tolerance (rtol = atol = V) of the adaptive solver, whose NFE is measured.
Outputs go to `workdir/nfe_sweep_<solver>.{md,csv,png}`.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

from fm.io import files

__all__ = ["LABELS", "parse", "write"]

LABELS = {"fid": "FID", "kid": "KID", "bpd": "bits/dim", "w2": "W2", "nll": "NLL (nats)"}


def parse(spec: str) -> tuple[str, list[float | int]]:
  """"euler:1,2,5" -> ("euler", [1, 2, 5]); "dopri5:1e-3,1e-5" -> ("dopri5", [1e-3, 1e-5])."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  solver, sep, values = spec.partition(":")
  if not sep or solver not in solvers.SOLVERS or not values:
    raise ValueError(f"--nfe-sweep must look like euler:1,2,5,10 (a solver from {', '.join(solvers.SOLVERS)}, "
                     f"then steps, or tolerances for dopri5), got {spec!r}")
  out = []
  for text in values.split(","):
    adaptive = solver in solvers.ADAPTIVE
    try:
      v = float(text) if adaptive else int(text)
    except ValueError:
      v = 0
    if v <= 0 or v != v or v == float("inf"):
      what = "a positive number" if adaptive else "a positive whole number"
      kind = "tolerances such as 1e-3" if adaptive else "whole step counts such as 1,2,5"
      raise ValueError(f"--nfe-sweep {spec!r}: {text!r} is not {what}; {solver} takes {kind}")
    out.append(v)
  if len(set(out)) != len(out):
    raise ValueError(f"--nfe-sweep {spec!r} repeats a value")
  return solver, out


def write(workdir: str, solver: str, rows: Sequence[dict[str, Any]], metrics: Sequence[str],
          caption: str) -> dict[str, str]:
  """Writes `nfe_sweep_<solver>.md`, `.csv` and `.png` (metric against NFE); returns their paths."""
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  stem = os.path.join(workdir, f"nfe_sweep_{solver}")
  setting = "tol" if "tol" in rows[0] else "steps"
  columns = ["solver", setting, "nfe", *metrics]
  columns += [c for c in rows[0] if c not in columns]
  out = io.StringIO()
  w = csv.DictWriter(out, columns, lineterminator="\r\n")
  w.writeheader()
  w.writerows(rows)
  files.write_text(stem + ".csv", out.getvalue())
  header = ["solver", setting, "NFE", *(LABELS.get(m, m) for m in metrics)]
  lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["solver"], f"{r[setting]:g}", f"{r['nfe']:g}", *(f"{r[m]:.4g}" for m in metrics)]
    lines.append("| " + " | ".join(cells) + " |")
  files.write_text(stem + ".md", "\n".join(lines) + "\n")
  panels = [(LABELS.get(m, m), {solver: ([r["nfe"] for r in rows], [r[m] for r in rows])}) for m in metrics]
  plots.nfe_curves(stem + ".png", panels, title=caption.split(".")[0])
  return {"md": stem + ".md", "csv": stem + ".csv", "png": stem + ".png"}
