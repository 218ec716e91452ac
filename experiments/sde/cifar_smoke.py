"""CIFAR-10 smoke: 1-step MeanFlow beside I-CFM's Euler-1 and dopri5, grids and FID / KID, all through `fm`.

  python experiments/sde/cifar_smoke.py --workdir runs/mf-c10 --steps 1500 --num 1000 --ref-num 5000 \
      --data-path ../shared/data/cifar10-jpeg.tar.gz --out experiments/sde

Two runs of the same recipe, `configs/cifar10.py:smoke` (tiny UNet, 16 x 16 downscaled JPEG copy,
batch 32, lr 1e-3, EMA 0.99, seed 0) for `--steps` steps: `method=icfm` and `method=meanflow`
(`configs/cifar10.py:meanflow_smoke`), each trained by `fm train` (equal steps; a MeanFlow step costs
about twice an I-CFM step: a jvp and an ordinary pass). Then, for each sampler setting:
`fm sample` (64 samples, the same noise, an 8 x 8 grid copied to `--out` as
`cifar_<method>_<sampler>.png`) and, when the Inception weights are installed, `fm eval --metrics
fid,kid --num N --fid-ref-num R` ("tf" preprocessing). Every command resumes or is skipped when its
output exists, so the script can be stopped and re-run. Writes `cifar_smoke.md` (the table, with N,
reference, seed, solver, NFE and commit) and `cifar_smoke.json` (the records) to `--out`.

`--icfm-workdir` reuses an I-CFM run of the same recipe (e.g. `make demo-images`'s `demo_images/icfm`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (method, sampler name, fm flags): the grid and metric settings
SETTINGS = (
    ("icfm", "euler1", ["--solver", "euler", "--steps", "1"]),
    ("icfm", "dopri5", ["--solver", "dopri5", "--rtol", "1e-3", "--atol", "1e-3"]),
    ("meanflow", "meanflow1", ["--solver", "meanflow", "--steps", "1"]),
    ("meanflow", "meanflow2", ["--solver", "meanflow", "--steps", "2"]),
    ("meanflow", "dopri5", ["--solver", "dopri5", "--rtol", "1e-3", "--atol", "1e-3"]),
)


def fm(*args: str) -> None:
  cmd = [sys.executable, "-m", "fm", *args]
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT)


def matches(rec: dict, flags: list[str], args) -> bool:
  """Whether an eval.jsonl record is of this sampler setting, sample count, checkpoint, reference and seed."""
  opts = dict(zip(flags[::2], flags[1::2]))
  if rec.get("solver") != opts["--solver"] or rec.get("num_samples") != args.num or rec.get("step") != args.steps:
    return False
  if rec.get("reference_num") != args.ref_num or rec.get("seed") != args.seed:
    return False
  if "--steps" in opts:
    return rec.get("steps") == int(opts["--steps"])
  return rec.get("rtol") == float(opts["--rtol"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/mf-c10")
  parser.add_argument("--icfm-workdir", default=None)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--num", type=int, default=1000, help="samples per FID / KID point (0: no FID)")
  parser.add_argument("--ref-num", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data-path", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "sde"))
  args = parser.parse_args()
  from fm.evaluate import fid  # pylint: disable=g-import-not-at-top
  from fm.evaluate.records import read as records  # pylint: disable=g-import-not-at-top
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdirs = {"icfm": args.icfm_workdir or os.path.join(args.workdir, "icfm"),
              "meanflow": os.path.join(args.workdir, "meanflow")}
  for method, variant in (("icfm", "smoke"), ("meanflow", "meanflow_smoke")):
    wd = workdirs[method]
    if checkpoint.latest_step(wd) != args.steps:
      fm("train", "--config", f"configs/cifar10.py:{variant}", "--workdir", wd, f"--config.train.steps={args.steps}",
         f"--config.seed={args.seed}", f"--config.data.path={os.path.abspath(args.data_path)}")
  with_fid = args.num > 0 and fid.default_weights_path().exists()
  rows = []
  for method, name, flags in SETTINGS:
    wd = workdirs[method]
    out = os.path.join(wd, f"grid_{name}.npz")
    if not os.path.exists(out):
      fm("sample", "--workdir", wd, *flags, "--num", "64", "--seed", str(args.seed), "--out", out)
    shutil.copyfile(out[:-4] + ".png", os.path.join(args.out, f"cifar_{method}_{name}.png"))
    row = {"method": method, "sampler": name}
    if with_fid:
      if not any(matches(r, flags, args) for r in records(wd) if r.get("metric") == "fid"):
        fm("eval", "--workdir", wd, *flags, "--metrics", "fid,kid", "--num", str(args.num), "--seed", str(args.seed),
           "--fid-ref-num", str(args.ref_num))
      for r in records(wd):
        if r.get("metric") in ("fid", "kid") and matches(r, flags, args):
          row[r["metric"]] = r
    rows.append(row)
  lines = ["| method | sampler | NFE | FID | FID subset std | KID × 1e3 | KID std × 1e3 |", "|---|---|---|---|---|---|---|"]
  for row in rows:
    f, k = row.get("fid"), row.get("kid")
    cell = lambda v, d=2: "" if v is None else f"{v:.{d}f}"
    nfe = f["nfe"] if f else None
    lines.append(f"| {row['method']} | {row['sampler']} | {cell(nfe, 0)} | {cell(f and f['value'])} | "
                 f"{cell(f and f.get('fid_subsets_std'))} | {cell(k and 1e3 * k['value'])} | "
                 f"{cell(k and 1e3 * k.get('kid_std', 0.0))} |")
  first = next((row["fid"] for row in rows if "fid" in row), None)
  if first:
    lines += ["", f"N = {first['num_samples']} samples per row, {first['fid_preprocessing']} preprocessing, reference: "
              f"{first['reference_data']}; seed {first['seed']}, {args.steps} training steps per run, "
              f"commit {first['fm_commit'][:10]}. FID subset std: 5 disjoint subsets of N / 5."]
  with open(os.path.join(args.out, "cifar_smoke.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(args.out, "cifar_smoke.json"), "w") as f:
    json.dump(rows, f, indent=1, default=str)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
