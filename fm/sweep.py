"""Grid sweeps: one run per grid point, then mean ± std over seeds.

`fm sweep --config configs/toy2d.py --workdir runs/sweep --grid method=icfm,otcfm
--grid seed=0,1,2` trains and evaluates every combination in
`runs/sweep/<key-value_...>/` (finished runs are skipped, so a sweep resumes),
then writes `table.md` and `table.csv` (eval metrics, mean ± std over `seed`)
and `figure.png` (Euler trajectories of each configuration side by side, over
held-out target points, with the configuration's metrics in its title). A point
that fails is logged and listed under the table; the others still run.
"""
from __future__ import annotations

import csv
import itertools
import logging
import os
import re

import ml_collections
import numpy as np

from fm import config as config_lib

__all__ = ["parse_grid", "expand", "run_sweep", "aggregate", "METRICS"]

METRICS = ("w2", "nfe", "w2_euler", "normalized_path_energy")
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
  """[(name, point, config)] for every grid point, each resolved (`fm.recipe.resolve`)."""
  runs = []
  for values in itertools.product(*grid.values()):
    point = dict(zip(grid, values))
    from fm import recipe  # pylint: disable=g-import-not-at-top
    run_config = recipe.resolve(config_lib.apply_overrides(config, point.items()))
    runs.append((_run_name(point), point, run_config))
  return runs


def _fmt(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(results: list[tuple[dict[str, str], dict]], group_keys: list[str]):
  """Groups eval results by `group_keys`; returns [(group point, n, {metric: (mean, std)})]."""
  groups: dict[tuple, list[dict]] = {}
  for point, result in results:
    groups.setdefault(tuple(point[k] for k in group_keys), []).append(result)
  rows = []
  for key, rs in groups.items():
    rows.append((dict(zip(group_keys, key)), len(rs),
                 {m: _fmt([r[m] for r in rs]) for m in METRICS}))
  return rows


def write_tables(workdir: str, rows, group_keys: list[str], failures=()) -> None:
  """`table.md` and `table.csv` of `aggregate`'s rows; failed points `(label, error)` are listed under table.md."""
  header = [*group_keys, "n"]
  md = ["| " + " | ".join(header + list(METRICS)) + " |", "|" + "---|" * (len(header) + len(METRICS))]
  with open(os.path.join(workdir, "table.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for point, n, stats in rows:
      cells = [point[k] for k in group_keys] + [str(n)]
      writer.writerow(cells + [f"{v:.6g}" for m in METRICS for v in stats[m]])
      md.append("| " + " | ".join(cells + [f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in METRICS]) + " |")
  from fm import provenance  # pylint: disable=g-import-not-at-top
  md += ["", f"Made with {provenance.summary()}."]
  if failures:
    md += ["", f"Failed points ({len(failures)}, not in the table):"]
    md += [f"- {label}: {error}" for label, error in failures]
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write("\n".join(md) + "\n")


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
    results.append((point, result))
    done.append((name, point, run_config))
  group_keys = [k for k in grid if k != "seed"]
  rows = aggregate(results, group_keys)
  os.makedirs(workdir, exist_ok=True)
  write_tables(workdir, rows, group_keys, failures)
  if done:
    _figure(workdir, done, rows, group_keys)
  return rows, failures


def _figure(workdir: str, done, rows, group_keys: list[str]) -> None:
  """Trajectories of the first finished seed of each configuration over its held-out targets."""
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  from fm.data import toys  # pylint: disable=g-import-not-at-top
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  stats = {tuple(p[k] for k in group_keys): s for p, _, s in rows}
  panels, seen = [], set()
  for name, point, run_config in done:
    key = tuple(point[k] for k in group_keys)
    if key in seen:
      continue
    seen.add(key)
    s = stats[key]
    title = (f"{', '.join(point[k] for k in group_keys) or name}\n"
             f"W2 {s['w2'][0]:.3f}, NFE {s['nfe'][0]:.0f}, NPE {s['normalized_path_energy'][0]:.3f}")
    _, target = toys.parse_task(run_config.data.task)
    reference = toys.sample(target, evaluate.toy.eval_keys(run_config.eval.seed)[1], 1000)
    panels.append((title, evaluate.trajectories(os.path.join(workdir, name)), np.asarray(reference)))
  plots.trajectories_figure(os.path.join(workdir, "figure.png"), panels)
