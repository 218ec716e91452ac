"""Bits/dim of a small CIFAR-10 image run: exact divergence against Hutchinson, at two dopri5 tolerances.

  PYTHONPATH=. python experiments/images/bpd.py --workdir /tmp/bpd_run   # ~30-60 min on a loaded 2-core CPU
  python experiments/images/bpd.py --from-workdir demo_images/icfm --exact-num 2 --hutch-num 128 --draws 2
      # the smoke UNet run of `make demo-images` (no training), written to BPD_RESULTS_UNET.md

configs/cifar10.py:smoke has a UNet; this script trains the same smoke setup
(16x16 box-downscaled CIFAR-10 JPEG copy, all 50 000 train images, I-CFM,
sigma = 0) with an MLP instead (`--model mlp`, 3 x 512 SELU), unless
`--model unet` is asked for, or `--from-workdir` names a trained run (any
model) to measure as it is. Then, through `fm eval`'s runner
(every number also lands in WORKDIR/eval.jsonl), on held-out images of the
test split (a seeded random subset):

  - exact divergence (768 vjps per evaluation) on `--exact-num` images,
  - Hutchinson (one Rademacher probe) on the same images, and on `--hutch-num` images,

each at dopri5 rtol = atol = 1e-3 and 1e-5, and writes `BPD_RESULTS.md` (MLP) or
`BPD_RESULTS_UNET.md` (UNet) to `--out`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from fm import experiment
from fm import config as config_lib
from fm import likelihood
from fm.evaluate import image_metrics, reference, runner
from fm import recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def _config(args):
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  if args.model == "mlp":
    config.model = ml_collections.ConfigDict({"name": "mlp", "width": 512, "depth": 3, "activation": "selu"})
  overrides = {"data.path": args.data_path} if args.data_path else {}
  overrides |= {"train.steps": args.steps, "train.batch_size": 128, "train.steps_per_call": 100,
               "train.log_every": 500, "train.checkpoint_every": args.steps, "eval.every": 0, "eval.at_end": False}
  config = config_lib.apply_overrides(config, [(k, str(v)) for k, v in overrides.items()])
  recipe.resolve(config)
  return config


def probe_spread(workdir: str, num: int, tol: float, draws: int) -> dict:
  """Exact and `draws` Hutchinson estimates (fresh probes, one fixed dequantisation) of the same images.

  Written on fm.likelihood.log_prob directly, not through bits_per_dim, so the dequantised
  points stay fixed while only the probes change.
  """
  run, params, _ = recipe.load(workdir)
  images, _ = image_metrics.held_out(reference.load_kwargs(run.config.data.to_dict()), num, 0)
  d = images[0].size
  u = np.random.default_rng(1).uniform(size=images.shape).astype(np.float32)
  y = 2.0 * (images.astype(np.float32) + u) / 256.0 - 1.0
  v = recipe.velocity(run.model, params)

  def bpd(divergence, key):
    logp, _ = likelihood.log_prob(v, y, key=key, divergence=divergence, rtol=tol, atol=tol)
    return float(np.mean(-np.asarray(logp, np.float64) / (d * np.log(2.0)) + 7.0))

  exact = bpd("exact", None)
  hutch = [bpd("hutchinson", jax.random.PRNGKey(100 + i)) for i in range(draws)]
  return {"exact": exact, "hutch": hutch}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="bpd_run")
  parser.add_argument("--data-path", default="", help="image folder or tarball (default: the config's, "
                                                      "../shared/data/cifar10-jpeg.tar.gz beside the checkout)")
  parser.add_argument("--model", default="mlp", choices=("mlp", "unet"))
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--exact-num", type=int, default=16)
  parser.add_argument("--hutch-num", type=int, default=512)
  parser.add_argument("--tols", default="1e-3,1e-5")
  parser.add_argument("--draws", type=int, default=8, help="Hutchinson probe draws for the probe noise")
  parser.add_argument("--out", default=HERE)
  parser.add_argument("--from-workdir", default="", help="measure this trained run instead of training one")
  args = parser.parse_args(argv)
  if args.from_workdir:
    args.workdir = args.from_workdir
    config = recipe.read_config(args.workdir)
    train_s = None
  else:
    config = _config(args)
    t0 = time.time()
    experiment.train(config, args.workdir)
    train_s = time.time() - t0
  rows = []
  for tol in (float(t) for t in args.tols.split(",")):
    for div, num in (("exact", args.exact_num), ("hutchinson", args.exact_num), ("hutchinson", args.hutch_num)):
      t1 = time.time()
      opts = runner.Options(metrics=("bpd",), rtol=tol, atol=tol, divergence=div, bpd_num=num,
                            bpd_batch_size=min(num, 64 if div == "hutchinson" else 16), progress=False)
      (rec,), _ = runner.evaluate(args.workdir, opts)
      rec["wall_s"] = time.time() - t1
      rows.append(rec)
      print(f"tol {tol:g} {div} n={num}: {rec['value']:.4f} ± {rec['bpd_sem']:.4f} bits/dim, "
            f"NFE {rec['nfe']:.1f} per batch, {rec['wall_s']:.0f} s", flush=True)
  t1 = time.time()
  spread = probe_spread(args.workdir, args.exact_num, float(args.tols.split(",")[0]), args.draws)
  spread_s = time.time() - t1
  h = np.asarray(spread["hutch"])
  print(f"probe spread: exact {spread['exact']:.4f}, hutchinson {h.mean():.4f} ± {h.std(ddof=1):.4f} "
        f"over {len(h)} probe draws ({spread_s:.0f} s)", flush=True)
  load = os.getloadavg()[0]
  lines = [
      "# Bits/dim of a small CIFAR-10 run: exact vs Hutchinson divergence, two tolerances", "",
      f"Run: `python experiments/images/bpd.py{' --from-workdir ' + args.workdir if train_s is None else ''}` — "
      f"{config.model.name.upper()} ({', '.join(f'{k}={v}' for k, v in config.model.items() if k != 'name')}) "
      f"trained with {config.method} for {config.train.steps} steps at batch {config.train.batch_size} on "
      f"{rows[0]['data']}" + (", EMA parameters of that run." if train_s is None else f" ({train_s:.0f} s)."), "",
      f"Held-out images: {rows[0]['held_out']} (exact rows) — the Hutchinson rows on the same images use "
      "the same dequantisation noise (same seed), so exact and Hutchinson differ only by the divergence "
      "estimator and the solver's step sizes. bits/dim = -log p1(y) / (D ln 2) + 7 with y = 2 (k + u) / 256 - 1, "
      "u ~ U[0, 1)^D, D = 16·16·3 = 768; dopri5 from t = 1 to 0, rtol = atol = tol; NFE = evaluations of the "
      "augmented dynamics per batch (exact: 1 + 2·768 network passes each; Hutchinson, 1 probe: 3).", "",
      "| tol | divergence | images | bits/dim | ± s.e. | NFE per batch | batch | wall (s) |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['rtol']:g} | {r['divergence']} | {r['num_images']} | {r['value']:.4f} | "
                 f"{r['bpd_sem']:.4f} | {r['nfe']:.1f} | {r['batch_size']} | {r['wall_s']:.0f} |")
  ex = {r["rtol"]: r for r in rows if r["divergence"] == "exact"}
  hu = {r["rtol"]: r for r in rows if r["divergence"] != "exact" and r["num_images"] == args.exact_num}
  for tol in ex:
    lines.append("")
    lines.append(f"At tol {tol:g}: Hutchinson - exact on the same {args.exact_num} images = "
                 f"{hu[tol]['value'] - ex[tol]['value']:+.4f} bits/dim.")
  lines += ["", f"Probe noise (`probe_spread`: fm.likelihood.log_prob on the same {args.exact_num} images with one "
                f"fixed dequantisation, dopri5 at {float(args.tols.split(',')[0]):g}): exact {spread['exact']:.4f}; "
                f"Hutchinson over {len(h)} independent probe draws {h.mean():.4f} (mean), standard deviation "
                f"{h.std(ddof=1):.4f} of the {args.exact_num}-image mean per draw, range {h.min():.4f}..{h.max():.4f} "
                f"({spread_s:.0f} s)."]
  lines += ["", f"CPU: 2 cores, load average {load:.1f} at the end; fm commit {rows[0]['fm_commit'][:12]}."]
  name = "BPD_RESULTS_UNET.md" if config.model.name == "unet" else "BPD_RESULTS.md"
  with open(os.path.join(args.out, name), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
