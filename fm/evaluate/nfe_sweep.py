"""NFE sweeps: parsing `SOLVER:V1,V2,...` and writing the table (md, csv) and the figure.

`euler:1,2,5,10` sweeps the number of steps of a fixed-step solver (NFE = steps x
stages: 1 euler, 2 midpoint / heun, 4 rk4); `dopri5:1e-2,1e-3` sweeps the
tolerance (rtol = atol = V) of the adaptive solver, whose NFE is measured. The
SDE solvers sweep steps at one diffusion scale (`euler_maruyama:25,50,100`, NFE =
steps; `stochastic_heun`, NFE = 2 steps; `fm.solvers.sde`) and `meanflow:1,2,4`
the number of average-velocity jumps of a MeanFlow run (NFE = jumps).
Outputs go to `workdir/nfe_sweep_<solver>.{md,csv,png}`, for an SDE solver
`nfe_sweep_<solver>_noise<a>.{md,csv,png}` (one file per diffusion scale a).
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

from fm.io import files

__all__ = ["LABELS", "HEADERS", "parse", "stem", "write"]

LABELS = {"fid": "FID", "kid": "KID", "bpd": "bits/dim", "w2": "W2", "nll": "NLL (nats)"}
HEADERS = {"nfe": "NFE", "sde_noise": "SDE noise", "network_passes": "network passes"}


def parse(spec: str) -> tuple[str, list[float | int]]:
  """"euler:1,2,5" -> ("euler", [1, 2, 5]); "dopri5:1e-3,1e-5" -> ("dopri5", [1e-3, 1e-5])."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  solver, sep, values = spec.partition(":")
  if not sep or solver not in solvers.SAMPLERS or not values:
    raise ValueError(f"--nfe-sweep must look like euler:1,2,5,10 (a solver from {', '.join(solvers.SAMPLERS)}, "
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


def stem(workdir: str, solver: str, sde_noise: float | None = None) -> str:
  """The sweep's output path without extension: `nfe_sweep_<solver>`, plus `_noise<a>` for an SDE sweep."""
  return os.path.join(workdir, f"nfe_sweep_{solver}" + ("" if sde_noise is None else f"_noise{sde_noise:g}"))


def write(workdir: str, solver: str, rows: Sequence[dict[str, Any]], metrics: Sequence[str],
          caption: str) -> dict[str, str]:
  """Writes the sweep's `.md`, `.csv` and `.png` (metric against NFE); returns their paths.

  Each row has `solver`, `steps` (or `tol`), `nfe` and the metrics; an SDE sweep's rows
  also `sde_noise` (shown in the table and the legend), a conditional run's `network_passes`.
  """
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  noise = rows[0].get("sde_noise")
  path = stem(workdir, solver, noise)
  setting = "tol" if "tol" in rows[0] else "steps"
  columns = ["solver", setting, *(["sde_noise"] if "sde_noise" in rows[0] else []), "nfe",
             *(["network_passes"] if "network_passes" in rows[0] else []), *metrics]
  table = list(columns)   # the md table; the csv also has any other column of the rows
  columns += [c for c in rows[0] if c not in columns]
  out = io.StringIO()
  w = csv.DictWriter(out, columns, lineterminator="\r\n")
  w.writeheader()
  w.writerows(rows)
  files.write_text(path + ".csv", out.getvalue())
  header = [HEADERS.get(c, LABELS.get(c, c)) for c in table]
  lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r[c] if c == "solver" else f"{r[c]:.4g}" if c in metrics else f"{r[c]:g}" for c in table]
    lines.append("| " + " | ".join(cells) + " |")
  files.write_text(path + ".md", "\n".join(lines) + "\n")
  label = solver if noise is None else f"{solver}, SDE noise {noise:g}"
  panels = [(LABELS.get(m, m), {label: ([r["nfe"] for r in rows], [r[m] for r in rows])}) for m in metrics]
  title = caption.split(". ")[0]   # the first sentence (not cut at a decimal point such as "noise 0.5")
  plots.nfe_curves(path + ".png", panels, title=title, annotations={label: [f"{setting} {r[setting]:g}" for r in rows]})
  return {"md": path + ".md", "csv": path + ".csv", "png": path + ".png"}
