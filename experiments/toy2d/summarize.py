"""Combines the toy2d sweeps (see run.sh) into results.md and figure.png.

  .venv/bin/python experiments/toy2d/summarize.py --root runs/toy2d --sb-sigma 0.5 --pilot runs/toy2d/pilot

Reads `ROOT/<task>/main/table.csv` (icfm, otcfm, rf, fm) and
`ROOT/<task>/sbcfm/table.csv` (sbcfm per sigma), which `fm sweep` writes as mean
and sample std over seeds, checks every run's eval.json (finite metrics, dopri5
success, step), and writes one markdown table (rows task x method(sigma), columns
W2, NFE, W2 Euler-100, NPE) plus a trajectory grid of seed 0 (rows tasks,
columns methods).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("gaussian->8gaussians", "gaussian->moons", "8gaussians->moons", "gaussian->scurve")
METRICS = (("w2", "W2 (dopri5)", 3), ("nfe", "NFE (dopri5)", 1),
           ("w2_euler", "W2 (Euler 100)", 3), ("normalized_path_energy", "NPE", 3))


def slug(task: str) -> str:
  return task.replace("->", "-")


def read_table(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def columns(sb_sigma: str) -> list[tuple[str, str, str, str]]:
  """(label, sweep, key column, key value) in table/figure order."""
  return [("I-CFM (σ=0.1)", "main", "method", "icfm"),
          ("OT-CFM (σ=0.1)", "main", "method", "otcfm"),
          ("SB-CFM (σ=1.0)", "sbcfm", "sigma", "1.0"),
          (f"SB-CFM (σ={sb_sigma})", "sbcfm", "sigma", sb_sigma),
          ("RF (1-rectified, σ=0)", "main", "method", "rf"),
          ("FM (Lipman, σ_min=1e-4)", "main", "method", "fm")]


def run_dir(root, task, sweep, key, value, seed=0):
  return os.path.join(root, slug(task), sweep, f"{key}-{value}_seed-{seed}")


def fmt(row: dict, metric: str, digits: int) -> str:
  return f"{float(row[metric + '_mean']):.{digits}f} ± {float(row[metric + '_std']):.{digits}f}"


def check_runs(root: str) -> list[str]:
  """One line per eval.json with a non-finite metric or a failed dopri5 solve."""
  notes = []
  for path in sorted(glob.glob(os.path.join(root, "*", "*", "*", "eval.json"))):
    with open(path) as f:
      r = json.load(f)
    bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad or not r.get("dopri5_success", True):
      notes.append(f"{os.path.relpath(os.path.dirname(path), root)}: "
                   f"dopri5_success={r.get('dopri5_success')}, non-finite={bad}")
  return notes


def w2_floor(draws: int = 5, n: int = 1000) -> dict[str, tuple[float, float]]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fm import metrics  # pylint: disable=g-import-not-at-top
  from fm.data import toys  # pylint: disable=g-import-not-at-top
  w2 = jax.jit(metrics.w2)
  out = {}
  for target in dict.fromkeys(t.split("->")[1] for t in TASKS):
    vals = []
    for d in range(draws):
      ka, kb = jax.random.split(jax.random.PRNGKey(1000 + d))
      vals.append(float(w2(toys.sample(target, ka, n), toys.sample(target, kb, n))))
    out[target] = (float(np.mean(vals)), float(np.std(vals, ddof=1)))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", default="runs/toy2d")
  ap.add_argument("--sb-sigma", default="0.5", help="the second SB-CFM sigma, as written in run.sh")
  ap.add_argument("--pilot", default="", help="pilot sweep workdir (table.csv), optional")
  ap.add_argument("--out", default=HERE)
  args = ap.parse_args()
  cols = columns(args.sb_sigma)
  os.makedirs(args.out, exist_ok=True)

  head = ["task", "method", "n"] + [m[1] for m in METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  steps = set()
  for task in TASKS:
    tables = {}
    for s, k in (("main", "method"), ("sbcfm", "sigma")):
      path = os.path.join(args.root, slug(task), s, "table.csv")
      tables[s] = {r[k]: r for r in read_table(path)} if os.path.exists(path) else {}
    for label, sweep, _, value in cols:
      row = tables[sweep].get(value)
      if row is None:
        continue
      lines.append("| " + " | ".join([task, label, row["n"]] + [fmt(row, m, d) for m, _, d in METRICS]) + " |")
  for path in glob.glob(os.path.join(args.root, "*", "*", "*", "eval.json")):
    if os.sep + "pilot" + os.sep not in path:
      with open(path) as f:
        steps.add(json.load(f)["step"])

  out = ["# Toy 2D results (Tong et al. 2024 protocol, reduced budget)", "",
         f"Training steps per run: {sorted(steps)}; mean ± sample std over seeds (n). "
         "W2: exact W2 between 1000 dopri5 samples (rtol = atol = 1e-5) and 1000 held-out target "
         "samples; NFE: dopri5 function evaluations for that solve; W2 (Euler 100): same with 100 "
         "Euler steps; NPE: normalised path energy |E∫|v|²dt − W2(source, target)²| / "
         "W2(source, target)² on the Euler trajectory.", "", *lines, ""]
  if args.pilot and os.path.exists(os.path.join(args.pilot, "table.csv")):
    p_steps = {json.load(open(p))["step"] for p in glob.glob(os.path.join(args.pilot, "*", "eval.json"))}
    out += ["## SB-CFM σ pilot (8gaussians->moons, seed 0, " f"{sorted(p_steps)} steps)", "",
            "| σ (ε = 2σ²) | " + " | ".join(m[1] for m in METRICS) + " |", "|---|---|---|---|---|"]
    for r in read_table(os.path.join(args.pilot, "table.csv")):
      out.append(f"| {r['sigma']} | " + " | ".join(f"{float(r[m + '_mean']):.{d}f}" for m, _, d in METRICS) + " |")
    out.append("")
  out += ["## W2 sampling floor", "",
          "W2 between two independent 1000-point samples of the same target (5 draws, mean ± std): "
          "what a perfect model would score on this metric.", "",
          "| target | W2 floor |", "|---|---|"]
  for target, (m, sd) in w2_floor().items():
    out.append(f"| {target} | {m:.3f} ± {sd:.3f} |")
  out.append("")
  notes = check_runs(args.root)
  out += ["## Run checks", "", "\n".join(f"- {n}" for n in notes) if notes else
          "Every run: finite metrics and dopri5 success.", ""]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(out))

  fig, axes = plt.subplots(len(TASKS), len(cols), figsize=(2.3 * len(cols), 2.4 * len(TASKS)))
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  for i, task in enumerate(TASKS):
    for j, (label, sweep, key, value) in enumerate(cols):
      ax = axes[i, j]
      d = run_dir(args.root, task, sweep, key, value)
      if not os.path.exists(os.path.join(d, "eval.json")):
        ax.axis("off")
        continue
      plots.draw_trajectories(ax, evaluate.trajectories(d, num=160), label if i == 0 else "")
      if j == 0:
        ax.set_ylabel(task, fontsize=9)
  fig.suptitle("Euler trajectories (100 steps), seed 0: black = source, blue = generated", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "figure.png"), dpi=80)
  plt.close(fig)
  print("\n".join(out))


if __name__ == "__main__":
  main()
