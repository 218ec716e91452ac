"""Grid sweeps: one run per grid point, then mean ± std over seeds.

`fm sweep --config configs/toy2d.py --workdir runs/sweep --grid method=icfm,otcfm
--grid seed=0,1,2` trains and evaluates every combination in
`runs/sweep/<key-value_...>/` (finished runs are skipped, so a sweep resumes),
then writes `table.md` and `table.csv`: one row per configuration, mean ± std
over `seed` of whatever the run kind has (`COLUMNS`). Toy runs: W2, dopri5 NFE,
path energy (and its normalised form), W2 after Euler steps, coupling cost of
the pairs before / after coupling (metrics.jsonl); image runs: the final loss,
dopri5 NFE, and FID or bits/dim when `eval.metrics` computes them (FID needs
the Inception weights; without them it is skipped with one sentence). And
`figure.png`: Euler trajectories of each configuration side by side over
held-out target points (toys) or each configuration's end-of-training sample
grid (images), titled with its numbers. A point that fails is logged and listed
under the table; the others still run.
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import re
from typing import Any

import ml_collections
import numpy as np

from fm import config as config_lib
from fm.io import files

__all__ = ["parse_grid", "expand", "run_sweep", "point_result", "columns", "aggregate", "write_tables", "COLUMNS",
           "METRICS"]

log = logging.getLogger("fm")


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
  """["method=icfm,rf", "seed=0,1"] -> {"method": ["icfm", "rf"], "seed": ["0", "1"]}."""
  grid = {}
  for spec in specs:
    key, sep, values = spec.partition("=")
    key = key.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not vals:
      raise config_lib.ConfigError(f"bad --grid {spec!r}: write it as KEY=VALUE1,VALUE2,... with at least one value")
    if key in grid:
      raise config_lib.ConfigError(f"bad --grid {spec!r}: key {key!r} is given twice; list all its values in one --grid")
    grid[key] = vals
  return grid


def _run_name(point: dict[str, str]) -> str:
  return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", f"{k}-{v}") for k, v in point.items()) or "run"


def expand(config: ml_collections.ConfigDict, grid: dict[str, list[str]]):
  """[(name, point, config)] for every grid point, each resolved (`fm.recipe.resolve`, eval.metrics too)."""
  from fm import recipe  # pylint: disable=g-import-not-at-top
  from fm.evaluate import registry  # pylint: disable=g-import-not-at-top
  runs = []
  for values in itertools.product(*grid.values()):
    point = dict(zip(grid, values))
    run_config = recipe.resolve(config_lib.apply_overrides(config, point.items()))
    registry.check_config(run_config)
    runs.append((_run_name(point), point, run_config))
  return runs


# Table columns in order: (key, header). A key comes from the run's eval.json view (`fm.evaluate.runner`) or,
# for loss and coupling costs, from metrics.jsonl; a column is shown when some point has it.
COLUMNS = (
    ("w2", "W2"), ("nfe", "NFE (dopri5)"), ("path_energy", "path energy"),
    ("normalized_path_energy", "NPE"), ("w2_euler", "W2 Euler"), ("nll", "NLL"), ("fid", "FID"),
    ("bpd", "bits/dim"), ("loss", "final loss"), ("cost_before", "coupling cost before"),
    ("cost_after", "coupling cost after"),
)
METRICS = tuple(k for k, _ in COLUMNS)


def point_result(run_dir: str, view: dict[str, Any]) -> dict[str, float]:
  """The numbers of one finished point: eval.json's numeric entries, the final training loss (the last
  row of metrics.jsonl) and the coupling's mean cost of pairs before / after coupling over all rows."""
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  out = {k: float(v) for k, v in view.items()
         if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "seed")}
  rows = workdir_lib.read_metrics(run_dir)
  if rows and "loss" in rows[-1]:
    out["loss"] = float(rows[-1]["loss"])
  for key in ("cost_before", "cost_after"):
    values = [r[key] for r in rows if key in r]
    if values:
      out[key] = float(np.mean(values))
  return out


def _fmt(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def columns(results: list[tuple[dict[str, str], dict]]) -> list[str]:
  """The `COLUMNS` keys that some result has, in table order."""
  present = {k for _, r in results for k in r}
  return [k for k in METRICS if k in present]


def aggregate(results: list[tuple[dict[str, str], dict]], group_keys: list[str],
              metrics: list[str] | None = None):
  """Groups results by `group_keys`; returns [(group point, n, {metric: (mean, std)})].

  Every column of `metrics` (default: `columns(results)`) is aggregated over the
  results of the group that have it; a group with none has no entry for it.
  """
  metrics = columns(results) if metrics is None else metrics
  groups: dict[tuple, list[dict]] = {}
  for point, result in results:
    groups.setdefault(tuple(point[k] for k in group_keys), []).append(result)
  rows = []
  for key, rs in groups.items():
    stats = {m: _fmt([r[m] for r in rs if m in r]) for m in metrics if any(m in r for r in rs)}
    rows.append((dict(zip(group_keys, key)), len(rs), stats))
  return rows


def write_tables(workdir: str, rows, group_keys: list[str], failures=(),
                 metrics: list[str] | None = None) -> dict[str, str]:
  """`table.md` and `table.csv` of `aggregate`'s rows (mean ± std over seeds); failed points `(label, error)`
  are listed under table.md. Returns the paths."""
  from fm import provenance  # pylint: disable=g-import-not-at-top
  if metrics is None:
    metrics = [m for m in METRICS if any(m in stats for _, _, stats in rows)]
  headers = dict(COLUMNS)
  header = [*group_keys, "n"]
  md = ["| " + " | ".join(header + [headers[m] for m in metrics]) + " |",
        "|" + "---|" * (len(header) + len(metrics))]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
  for point, n, stats in rows:
    cells = [point[k] for k in group_keys] + [str(n)]
    writer.writerow(cells + [f"{v:.6g}" if m in stats else "" for m in metrics for v in stats.get(m, (0, 0))])
    md.append("| " + " | ".join(cells + [f"{stats[m][0]:.4g} ± {stats[m][1]:.2g}" if m in stats else "n/a"
                                         for m in metrics]) + " |")
  md += ["", "mean ± sample std over seeds; n = finished points of the row.",
         "", f"Made with {provenance.summary()}."]
  if failures:
    md += ["", f"Failed points ({len(failures)}, not in the table):"]
    md += [f"- {label}: {error}" for label, error in failures]
  paths = {"md": os.path.join(workdir, "table.md"), "csv": os.path.join(workdir, "table.csv")}
  files.write_text(paths["csv"], out.getvalue())
  files.write_text(paths["md"], "\n".join(md) + "\n")
  return paths


def _label(point: dict[str, str]) -> str:
  return ", ".join(f"{k}={v}" for k, v in point.items()) or "(no grid)"


def run_sweep(config: ml_collections.ConfigDict, workdir: str, grid: dict[str, list[str]]):
  """Trains/evaluates every grid point (skipping finished ones) and writes the summary.

  Returns `(rows, failures)`: `aggregate`'s rows of the points that finished and
  `(point label, error)` of those that raised (a preemption still stops the sweep).
  """
  from fm import evaluate, experiment  # pylint: disable=g-import-not-at-top
  from fm.train import loop  # pylint: disable=g-import-not-at-top
  runs = expand(config, grid)
  for name, _, run_config in runs:  # validate everything before touching any workdir
    loop.prepare(run_config, os.path.join(workdir, name))
  results, failures, done = [], [], []
  for i, (name, point, run_config) in enumerate(runs, 1):
    run_dir = os.path.join(workdir, name)
    log.info("== sweep point %d/%d: %s (%s)", i, len(runs), _label(point), run_dir)
    try:
      result = evaluate.up_to_date(run_dir, run_config.train.steps) if os.path.isdir(run_dir) else None
      if result is None:
        experiment.train(run_config, run_dir)
        result = evaluate.evaluate_workdir(run_dir)
      else:
        log.info("%s: finished, eval.json is up to date", run_dir)
    except loop.Preempted:
      raise
    except Exception as e:  # pylint: disable=broad-except
      error = (str(e).strip().splitlines() or [type(e).__name__])[0]
      log.error("sweep point %s failed: %s: %s", _label(point), type(e).__name__, error)
      failures.append((_label(point), f"{type(e).__name__}: {error}"))
      continue
    results.append((point, point_result(run_dir, result)))
    done.append((name, point, run_config, result))
  group_keys = [k for k in grid if k != "seed"]
  rows = aggregate(results, group_keys)
  os.makedirs(workdir, exist_ok=True)
  write_tables(workdir, rows, group_keys, failures)
  if done:
    if done[0][2].data.get("name", "toy") == "images":
      _grid_figure(workdir, done, rows, group_keys)
    else:
      _figure(workdir, done, rows, group_keys)
  return rows, failures


def _figure(workdir: str, done, rows, group_keys: list[str]) -> None:
  """Trajectories of the first finished seed of each configuration over its held-out targets."""
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  from fm.data import toys  # pylint: disable=g-import-not-at-top
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  stats = {tuple(p[k] for k in group_keys): s for p, _, s in rows}
  panels, seen = [], set()
  for name, point, run_config, _ in done:
    key = tuple(point[k] for k in group_keys)
    if key in seen:
      continue
    seen.add(key)
    s = stats[key]
    title = f"{', '.join(point[k] for k in group_keys) or name}\n" + _short(s)
    _, target = toys.parse_task(run_config.data.task)
    reference = toys.sample(target, evaluate.toy.eval_keys(run_config.eval.seed)[1], 1000)
    panels.append((title, evaluate.trajectories(os.path.join(workdir, name)), np.asarray(reference)))
  plots.trajectories_figure(os.path.join(workdir, "figure.png"), panels)


def _short(stats: dict[str, tuple[float, float]]) -> str:
  """"W2 0.412, NFE 86, NPE 0.031" from whichever of those a configuration has."""
  parts = [f"{label} {stats[k][0]:.3g}" for k, label in (("w2", "W2"), ("fid", "FID"), ("nfe", "NFE"),
                                                          ("normalized_path_energy", "NPE"), ("loss", "loss"))
           if k in stats]
  return ", ".join(parts[:3])


def _grid_figure(workdir: str, done, rows, group_keys: list[str]) -> None:
  """The end-of-training sample grid (first 16 images) of the first finished seed of each configuration."""
  from fm.evaluate import images, plots  # pylint: disable=g-import-not-at-top
  stats = {tuple(p[k] for k in group_keys): s for p, _, s in rows}
  panels, seen = [], set()
  for name, point, _, view in done:
    key = tuple(point[k] for k in group_keys)
    if key in seen or not view.get("samples"):
      continue
    seen.add(key)
    with np.load(os.path.join(workdir, name, view["samples"])) as f:
      grid = images.make_grid(f["samples"][:16], cols=4)
    panels.append((f"{', '.join(point[k] for k in group_keys) or name}\n" + _short(stats[key]), grid))
  if not panels:
    log.info("no sample grids to show (eval.metrics has no grid): %s not written", os.path.join(workdir, "figure.png"))
    return
  plots.images_figure(os.path.join(workdir, "figure.png"), panels)
