"""Grid sweeps: one run per grid point, then mean ± std over seeds.

`fm sweep --config configs/toy2d.py --workdir runs/sweep --grid method=icfm,otcfm
--grid seed=0,1,2` trains and evaluates every combination in
`runs/sweep/<key-value_...>/` (finished runs are skipped, so a sweep resumes),
then writes `table.md` and `table.csv` (eval metrics, mean ± std over `seed`)
and `figure.png` (Euler trajectories of each configuration side by side).
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import re

import ml_collections
import numpy as np

from fm import config as config_lib

__all__ = ["parse_grid", "expand", "run_sweep", "aggregate", "METRICS"]

METRICS = ("w2", "nfe", "w2_euler", "normalized_path_energy")


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
  """["method=icfm,rf", "seed=0,1"] -> {"method": ["icfm", "rf"], "seed": ["0", "1"]}."""
  grid = {}
  for spec in specs:
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
      raise config_lib.ConfigError(f"bad --grid {spec!r}: write it as KEY=VALUE1,VALUE2,...")
    grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
  return grid


def _run_name(point: dict[str, str]) -> str:
  return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", f"{k}-{v}") for k, v in point.items()) or "run"


def expand(config: ml_collections.ConfigDict, grid: dict[str, list[str]]):
  """[(name, point, config)] for every grid point, each validated."""
  runs = []
  for values in itertools.product(*grid.values()):
    point = dict(zip(grid, values))
    run_config = config_lib.apply_overrides(config, point.items())
    config_lib.validate(run_config)
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


def write_tables(workdir: str, rows, group_keys: list[str]) -> None:
  header = [*group_keys, "n"]
  md = ["| " + " | ".join(header + list(METRICS)) + " |", "|" + "---|" * (len(header) + len(METRICS))]
  with open(os.path.join(workdir, "table.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for point, n, stats in rows:
      cells = [point[k] for k in group_keys] + [str(n)]
      writer.writerow(cells + [f"{v:.6g}" for m in METRICS for v in stats[m]])
      md.append("| " + " | ".join(cells + [f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in METRICS]) + " |")
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write("\n".join(md) + "\n")


def run_sweep(config: ml_collections.ConfigDict, workdir: str, grid: dict[str, list[str]]) -> list:
  """Trains/evaluates every grid point (skipping finished ones) and writes the summary."""
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  from fm.train import loop  # pylint: disable=g-import-not-at-top
  runs = expand(config, grid)
  for name, _, run_config in runs:  # validate everything before touching any workdir
    loop.prepare(run_config, os.path.join(workdir, name))
  results = []
  for name, point, run_config in runs:
    run_dir = os.path.join(workdir, name)
    eval_path = os.path.join(run_dir, "eval.json")
    result = None
    if os.path.exists(eval_path):
      with open(eval_path) as f:
        result = json.load(f)
      if result.get("step") != run_config.train.steps:
        result = None
    if result is None:
      loop.train(run_config, run_dir)
      result = evaluate.evaluate_workdir(run_dir)
    results.append((point, result))
  group_keys = [k for k in grid if k != "seed"]
  rows = aggregate(results, group_keys)
  write_tables(workdir, rows, group_keys)
  panels, seen = [], set()
  for name, point, _ in runs:
    key = tuple(point[k] for k in group_keys)
    if key not in seen:
      seen.add(key)
      title = ", ".join(point[k] for k in group_keys) or name
      panels.append((title, evaluate.trajectories(os.path.join(workdir, name))))
  plots.trajectories_figure(os.path.join(workdir, "figure.png"), panels)
  return rows
