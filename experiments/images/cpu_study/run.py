"""CPU study: does OT-CFM reach a given FID / KID with fewer NFE than I-CFM and SB-CFM on images?

    python experiments/images/cpu_study/run.py --workdir runs/cpu_study --steps 20000 --num 5000 --ref-num 10000
    python experiments/images/cpu_study/run.py --workdir runs/cpu_study --summarize   # table + plot only

The smoke UNet of `configs/cifar10.py:smoke` (16 x 16 downscaled JPEG CIFAR-10, batch 32) trained
with icfm, otcfm and sbcfm (sigma `--sbcfm-sigma`, default 1 as the sbcfm preset; the others keep the recipe's sigma 0)
at an equal budget (`--steps`, same seed and data), then `fm eval`
NFE sweeps of FID and KID at `--num` samples ("tf" preprocessing, against `--ref-num` random
images of the run's own training source at 16 x 16, `fm eval --fid-ref-num`; 0 = all 50 000):
Euler at `--euler` steps and dopri5 at `--tols`. Every step is a
`fm` command whose workdir resumes (training from its latest checkpoint; a sweep already in
eval.jsonl for this checkpoint, sample count and preprocessing is not redone), so the script
can be stopped and re-run at any point. It writes WORKDIR/table.md, table.csv and figure.png
from the eval.jsonl records; each row carries N, preprocessing, seed, solver and commit.

Cost on a 2-core CPU (quiet): ~8 train steps/s, so 20 000 steps ~ 45 min per method; an FID /
KID point at 5 000 samples ~ 6 min of Inception (15 images/s) plus sampling.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

from fm.evaluate.records import read as records
from fm.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
METHODS = ("icfm", "otcfm", "sbcfm")


def fm(*args: str) -> None:
  cmd = [sys.executable, "-m", "fm", *args]
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def missing(workdir: str, solver: str, values: str, args) -> list[str]:
  """The sweep values (steps, or dopri5 tolerances) with no FID record yet at this checkpoint, N, preprocessing
  and reference size: a sweep stopped half way goes on from its first missing point."""
  done = [r for r in records(workdir) if r.get("metric") == "fid" and r.get("solver") == solver
          and r.get("step") == args.steps and r.get("num_samples") == args.num
          and r.get("fid_preprocessing") == args.preprocessing
          and (not args.ref_num or r.get("reference_num") == args.ref_num)]
  key = (lambda r: r.get("rtol")) if solver == "dopri5" else (lambda r: r.get("steps"))
  cast = float if solver == "dopri5" else int
  have = {key(r) for r in done}
  return [v for v in values.split(",") if cast(v) not in have]


def reference_of(rows: list[dict]) -> str:
  return rows[0].get("reference_data") or "each run's training source"


def summarize(args) -> None:
  rows = []
  for method in args.methods.split(","):
    wd = os.path.join(args.workdir, method)
    recs = [r for r in records(wd) if r.get("metric") in ("fid", "kid") and r.get("num_samples") == args.num
            and r.get("fid_preprocessing") == args.preprocessing]
    if not recs:
      continue
    step = max(r["step"] for r in recs)
    by = {}
    for r in recs:
      if r["step"] != step:
        continue
      setting = r.get("steps") if r["solver"] != "dopri5" else r.get("rtol")
      row = by.setdefault((r["solver"], setting), {"method": method, "step": step, "solver": r["solver"],
                                                  "setting": setting, "nfe": r["nfe"], "num": r["num_samples"],
                                                  "preprocessing": r["fid_preprocessing"], "seed": r["seed"],
                                                  "commit": r.get("fm_commit", "")[:10],
                                                  "reference_data": r.get("reference_data")})
      if r["metric"] == "fid":
        row.update(fid=r["value"], fid_std=r.get("fid_subsets_std"))
      else:
        row.update(kid=r["value"], kid_std=r.get("kid_std"))
    rows += sorted(by.values(), key=lambda r: (r["solver"], r["nfe"]))
  if not rows:
    print("no FID/KID records yet")
    return
  keys = ["method", "step", "solver", "setting", "nfe", "fid", "fid_std", "kid", "kid_std", "num", "preprocessing",
          "seed", "commit"]
  with open(os.path.join(args.workdir, "table.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  fmt = lambda v, d: "" if v is None else f"{v:.{d}f}"
  md = ["| method | step | solver | steps / tol | NFE | FID | FID subset std | KID × 1e3 | KID std × 1e3 |",
        "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    md.append(f"| {r['method']} | {r['step']} | {r['solver']} | {r['setting']} | {r['nfe']:.1f} | "
              f"{fmt(r.get('fid'), 2)} | {fmt(r.get('fid_std'), 2)} | "
              f"{fmt(None if r.get('kid') is None else 1e3 * r['kid'], 2)} | "
              f"{fmt(None if r.get('kid_std') is None else 1e3 * r['kid_std'], 2)} |")
  md.append("")
  md.append(f"N = {args.num} samples per point, {args.preprocessing} preprocessing, reference: {reference_of(rows)}; "
            f"seed {rows[0]['seed']}, commit {rows[0]['commit']}.")
  with open(os.path.join(args.workdir, "table.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric in zip(axes, ("fid", "kid")):
    for method in dict.fromkeys(r["method"] for r in rows):
      for solver, style in (("euler", "-o"), ("dopri5", "--s")):
        pts = [(r["nfe"], r[metric]) for r in rows if r["method"] == method and r["solver"] == solver
               and r.get(metric) is not None]
        if pts:
          ax.plot(*zip(*pts), style, label=f"{method} {solver}")
    ax.set_xscale("log")
    nfes = sorted({round(r["nfe"]) for r in rows})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric.upper())
    ax.legend(fontsize=7)
  fig.suptitle(f"smoke UNet, N = {args.num}, {args.preprocessing} preprocessing")
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "figure.png"), dpi=120)
  print("\n".join(md))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/cpu_study")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--steps", type=int, default=20000)
  parser.add_argument("--num", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--euler", default="1,2,4,8,16,32,64")
  parser.add_argument("--tols", default="1e-1,1e-2,1e-3,1e-4")
  parser.add_argument("--preprocessing", default="tf")
  parser.add_argument("--sbcfm-sigma", type=float, default=1.0,
                      help="sbcfm's sigma (path noise; coupling epsilon = 2 sigma^2). The CIFAR recipe's sigma 0 "
                           "is refused by SB-CFM; at 0.1 (epsilon 0.02) Sinkhorn does not converge in 1000 "
                           "iterations on these batches, at 0.3 it takes ~700, at 1 ~90")
  parser.add_argument("--ref-num", type=int, default=10000, help="reference images (0: the whole training source)")
  parser.add_argument("--summarize", action="store_true")
  args = parser.parse_args()
  if not args.summarize:
    for method in args.methods.split(","):
      wd = os.path.join(args.workdir, method)
      if checkpoint.latest_step(wd) != args.steps:
        sigma = [f"--config.path.sigma={args.sbcfm_sigma}"] if method == "sbcfm" else []
        fm("train", "--config", "configs/cifar10.py:smoke", "--workdir", wd, f"--config.method={method}",
           f"--config.train.steps={args.steps}", f"--config.seed={args.seed}", *sigma)
    for method in args.methods.split(","):
      wd = os.path.join(args.workdir, method)
      for solver, values in (("euler", args.euler), ("dopri5", args.tols)):
        todo = missing(wd, solver, values, args) if values else []   # --tols "": no dopri5 points
        if todo:
          fm("eval", "--workdir", wd, "--nfe-sweep", f"{solver}:{','.join(todo)}", "--metrics", "fid,kid",
             "--num", str(args.num),
             "--seed", str(args.seed), "--fid-preprocessing", args.preprocessing,
             *(["--fid-ref-num", str(args.ref_num)] if args.ref_num else []))
  summarize(args)


if __name__ == "__main__":
  main()
