"""`make demo-images`: the smoke UNet trained with I-CFM and OT-CFM on CIFAR-10, sample grids side by side.

  python experiments/images/demo.py --workdir demo_images     # ~9 minutes on a 2-core CPU
  python experiments/images/demo.py --workdir /tmp/d --smoke  # tens of seconds, for tests

Both runs use `configs/cifar10.py:smoke` (tiny UNet on 16x16 downscaled
images; same seed, data, model and budget) for 1500 steps (`--steps`; the
smoke config alone stops at 600) on the offline JPEG copy of
CIFAR-10 (`data.path`, default ../shared/data/cifar10-jpeg.tar.gz; its FID is
not comparable with published numbers, and none is computed here). Each run
is sampled from the same 64 noise draws with dopri5 (rtol = atol = 1e-3 by
default), and `results.md` and `figure.png` (the two grids side by side,
titled with the dopri5 NFE and the training time) go to the workdir. Runs
resume, so re-running after an interruption continues.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from fm import experiment
from fm import config as config_lib
from fm import evaluate
from fm import recipe
from fm.evaluate import images as images_eval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("icfm", "otcfm")


def _config(args, method):
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  overrides = {"method": method, "seed": args.seed, "eval.rtol": args.tol, "eval.atol": args.tol}
  if args.data_path:
    overrides["data.path"] = args.data_path
  if args.steps:
    overrides["train.steps"] = args.steps
  if args.smoke:
    overrides.update({"train.steps": 20, "train.batch_size": 8, "train.steps_per_call": 10,
                      "train.log_every": 10, "train.checkpoint_every": 20, "eval.every": 0,
                      "eval.num_samples": 16, "data.limit": 256})
  config = config_lib.apply_overrides(config, [(k, str(v)) for k, v in overrides.items()])
  recipe.resolve(config)
  return config


def _figure(path, panels):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
  for ax, (title, grid) in zip(axes[0], panels):
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="demo_images")
  parser.add_argument("--data-path", default="", help="image folder or tarball (default: the config's)")
  parser.add_argument("--steps", type=int, default=1500, help="train steps (0: the smoke config's 600)")
  parser.add_argument("--tol", type=float, default=1e-3, help="dopri5 rtol = atol of the final samples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="tiny budget (tests)")
  args = parser.parse_args(argv)
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  results, panels = {}, []
  for method in METHODS:
    config = _config(args, method)
    workdir = os.path.join(args.workdir, method)
    print(f"== {method}: {config.model.name} on {config.data.path or config.data.dataset} "
          f"({config.data.image_size or 'full'} px), {config.train.steps} steps, batch "
          f"{config.train.batch_size}, seed {config.seed}", flush=True)
    experiment.prepare(config, workdir)
    t0 = time.time()
    experiment.train(config, workdir)
    train_time = time.time() - t0
    result = evaluate.evaluate_workdir(workdir)   # config.eval.metrics: the grid
    result["train_seconds"] = train_time
    results[method] = result
    with np.load(os.path.join(workdir, result["samples"])) as f:
      grid = images_eval.make_grid(f["samples"][:64])
    panels.append((f"{method}: dopri5 NFE {result['nfe']:g} (tol {args.tol:g}), "
                   f"train {train_time / 60:.1f} min", grid))

  config = _config(args, "icfm")
  source = json.load(open(os.path.join(args.workdir, "icfm", "source.json")))
  lines = [f"Data: {source['description']}. Seed {args.seed}; {config.train.steps} steps at batch "
           f"{config.train.batch_size}; UNet {config.model.num_channels} ch, mult "
           f"{tuple(config.model.channel_mult)}; EMA {config.train.ema_decay}. Samples: "
           f"{config.eval.num_samples} from the same noise, dopri5 rtol = atol = {args.tol:g} "
           f"(NFE per batch, rejected steps included). Train time includes compilation.", "",
           "| method | dopri5 NFE | final loss | train time (s) |", "|---|---|---|---|"]
  for method, r in results.items():
    with open(os.path.join(args.workdir, method, "metrics.jsonl")) as f:
      last = [json.loads(l) for l in f if l.strip()][-1]
    lines.append(f"| {method} | {r['nfe']:g} | {last['loss']:.4f} | {r['train_seconds']:.0f} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  _figure(os.path.join(args.workdir, "figure.png"), panels)
  print(table)
  print(f"wrote {args.workdir}/results.md and figure.png in {time.time() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
