"""`make demo`: I-CFM, rectified flow (+ one reflow round), OT-CFM and SB-CFM on one 2D task.

  python experiments/toy2d/demo.py --workdir demo_out            # about 1.5 minutes on a 2-core CPU
  python experiments/toy2d/demo.py --workdir /tmp/d --smoke      # seconds, for tests

Trains the four methods with `configs/toy2d.py` (same seed, task, model and
budget), then 2-rectified flow on (z0, ODE_1RF(z0)) pairs of the finished
rectified-flow run, evaluates each (W2 of dopri5 samples at rtol = atol = 1e-5
against held-out target samples, the NFE that took, W2 after 100 Euler steps,
normalised path energy) and writes `results.md`, `results.csv` and
`figure.png` (trajectories, one panel per method) to the workdir. Every run
resumes, so re-running the command after an interruption continues it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from fm import experiment
from fm import config as config_lib
from fm import recipe
from fm import evaluate
from fm.data import toys
from fm.evaluate import plots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("icfm", "rf", "otcfm", "sbcfm")
COLUMNS = ("w2", "nfe", "w2_euler", "normalized_path_energy")


def _config(args, **overrides):
  config = config_lib.load(os.path.join(ROOT, "configs", "toy2d.py") + (":smoke" if args.smoke else ""))
  base = {"data.task": args.task, "seed": args.seed}
  if not args.smoke:
    base.update({"train.steps": args.steps, "train.batch_size": args.batch_size,
                 "train.checkpoint_every": args.steps // 2, "train.log_every": 250})
  base.update(overrides)
  config = config_lib.apply_overrides(config, [(k, str(v)) for k, v in base.items()])
  recipe.resolve(config)
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="demo_out")
  parser.add_argument("--task", default="8gaussians->moons")
  parser.add_argument("--steps", type=int, default=5000)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="tiny budget (tests)")
  args = parser.parse_args(argv)
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  runs = {}
  for method in METHODS:
    runs[method] = os.path.join(args.workdir, method)
  runs["2-rf"] = os.path.join(args.workdir, "2-rf")

  results = {}
  for name, workdir in runs.items():
    overrides = {"method": "rf" if name == "2-rf" else name}
    if name == "2-rf":
      overrides["reflow.teacher"] = runs["rf"]
    config = _config(args, **overrides)
    print(f"== {name}: {config.method} on {config.data.task}, {config.train.steps} steps, "
          f"batch {config.train.batch_size}, seed {config.seed}", flush=True)
    experiment.prepare(config, workdir)
    eval_path = os.path.join(workdir, "eval.json")
    done = False
    if os.path.exists(eval_path):
      with open(eval_path) as f:
        done = json.load(f).get("step") == config.train.steps
    if done:
      with open(eval_path) as f:
        results[name] = json.load(f)
    else:
      experiment.train(config, workdir)
      results[name] = evaluate.evaluate_workdir(workdir)

  config = _config(args)
  header = ["method", "W2 (dopri5)", "NFE (dopri5)", "W2 (Euler 100)", "normalised path energy"]
  lines = [f"Task `{args.task}`, seed {args.seed}, {config.train.steps} steps at batch "
           f"{config.train.batch_size} (MLP {config.model.depth}x{config.model.width} "
           f"{config.model.activation}, EMA params). Data: fm.data.toys (generated). "
           f"W2: exact, {config.eval.num_samples} samples vs held-out target samples; dopri5 at "
           f"rtol = atol = {config.eval.rtol:g}, NFE includes rejected steps. 2-rf: rectified flow "
           f"retrained on {config.reflow.num_pairs} (z0, ODE_rf(z0)) pairs (dopri5).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  with open(os.path.join(args.workdir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["method", *COLUMNS, "task", "seed", "steps", "rtol", "atol"])
    for name, r in results.items():
      writer.writerow([name, *(r[c] for c in COLUMNS), r["task"], r["seed"], r["step"], r["rtol"], r["atol"]])
      lines.append(f"| {name} | {r['w2']:.3f} | {r['nfe']} | {r['w2_euler']:.3f} | "
                   f"{r['normalized_path_energy']:.3f} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  panels = [(f"{name}: NFE {r['nfe']}, W2 {r['w2']:.2f}", evaluate.trajectories(runs[name]))
            for name, r in results.items()]
  target = toys.parse_task(args.task)[1]
  reference = np.asarray(toys.sample(target, evaluate.toy.eval_keys(args.seed)[1], 1000))
  plots.trajectories_figure(os.path.join(args.workdir, "figure.png"), panels, reference)
  print(table)
  print(f"wrote {args.workdir}/results.md, results.csv, figure.png in {time.time() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
