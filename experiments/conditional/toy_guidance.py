"""Mode accuracy and per-class W2 of a conditional gaussian->8gaussians toy against the guidance scale.

  .venv/bin/python experiments/conditional/toy_guidance.py --steps 300 --seeds 0,1,2 [--workdir /tmp/toyg]

Trains `configs/toy2d.py:smoke` made conditional (model.num_classes=8,
cond.drop_prob=0.1, method icfm unless --method) for each seed, then samples
1000 points with the held-out points' labels (dopri5, 1e-5) at each guidance
scale and prints a Markdown table (mean +- std over seeds): mode accuracy
(fraction of class-k samples nearest to mode k), mean per-class W2, NFE and
network passes.
"""
import argparse
import os

import numpy as np


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--guidance", default="0,1,1.5,2,3")
  p.add_argument("--method", default="icfm")
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--workdir", default="/tmp/toy_guidance")
  args = p.parse_args()
  from fm import config as config_lib, experiment, recipe
  from fm.evaluate import toy
  scales = [float(s) for s in args.guidance.split(",")]
  rows = {s: [] for s in scales}
  for seed in [int(s) for s in args.seeds.split(",")]:
    workdir = os.path.join(args.workdir, f"{args.method}_s{seed}_n{args.steps}")
    config = config_lib.apply_overrides(config_lib.load("configs/toy2d.py:smoke"), [
        ("data.task", "gaussian->8gaussians"), ("model.num_classes", "8"), ("cond.drop_prob", "0.1"),
        ("method", args.method), ("seed", str(seed)), ("train.steps", str(args.steps)),
        ("eval.at_end", "False")])
    experiment.train(config, workdir)
    run, params, _ = recipe.load(workdir)
    for s in scales:
      r = toy.w2_at(run.model, params, "gaussian->8gaussians", args.num, seed=0, guidance=s)
      rows[s].append((r["mode_accuracy"], r["w2_class_mean"], r["value"], r["nfe"], r["network_passes"]))
  print(f"| guidance | mode accuracy | mean per-class W2 | W2 (all) | dopri5 NFE | network passes |")
  print("|---|---|---|---|---|---|")
  for s in scales:
    a = np.asarray(rows[s], np.float64)
    m, sd = a.mean(0), a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    print(f"| {s:g} | {m[0]:.3f} ± {sd[0]:.3f} | {m[1]:.3f} ± {sd[1]:.3f} | {m[2]:.3f} ± {sd[2]:.3f} | "
          f"{m[3]:.0f} | {m[4]:.0f} |")


if __name__ == "__main__":
  main()
