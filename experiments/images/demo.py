"""`make demo-images`: the smoke UNet trained with I-CFM and OT-CFM on CIFAR-10, sample grids side by side.

  python experiments/images/demo.py --workdir demo_images     # ~9 minutes on a 2-core CPU
  python experiments/images/demo.py --workdir /tmp/d --smoke  # tens of seconds, for tests

Both runs use `configs/cifar10.py:smoke` (tiny UNet on 16x16 downscaled
images; same seed, data, model and budget) for 1500 steps (`--steps`; the
smoke config alone stops at 600) on the offline JPEG copy of
CIFAR-10 (`data.path`, default ../shared/data/cifar10-jpeg.tar.gz; its FID is
not comparable with published numbers). Each run is sampled from the same 64
noise draws with dopri5 (rtol = atol = 1e-3 by default), and `results.md` and
`figure.png` (the two grids side by side, titled with the dopri5 NFE and the
training time) go to the workdir. Runs resume, so re-running after an
interruption continues.

FID and KID (when the Inception weights are installed: `make fid-weights`):
`--fid-num` samples per method (default 500) from the same noise (sample i from
`fold_in(PRNGKey(seed), i)`) at Euler `--fid-euler` steps (equal NFE for both
methods) and dopri5 at `--tol`, "tf" preprocessing, against `--fid-ref` random
images (numpy default_rng(seed)) of the training source at 16 x 16; FID with the
std over 5 disjoint subsets, KID with torch-fidelity's conventions. The table
goes into results.md and the sweep into fid_sweep.png. Budget: 500 x 3 settings
x 2 methods + 1000 reference images = 4000 Inception passes, ~4.5 min at the
~15 images/s of a quiet 2-core CPU.
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
from fm import provenance
from fm import recipe
from fm.evaluate import fid, image_metrics, reference
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


def _fid_kid(args, config, workdirs: dict[str, str]) -> list[dict]:
  """FID / KID rows (method, solver, setting, NFE, values) of each run at the `--fid-euler` and dopri5 settings."""
  if not args.fid_num:
    return []
  if not fid.default_weights_path().is_file():
    print(f"FID and KID skipped: {fid.missing_weights(fid.default_weights_path())}.")
    return []
  from fm.data import images as images_lib  # pylint: disable=g-import-not-at-top
  inception = fid.load_inception()
  kwargs = reference.load_kwargs(config.data.to_dict())
  arr, _ = images_lib.load(**kwargs)
  n_ref = min(args.fid_ref, len(arr))
  cache = os.path.join(args.workdir, f"fid_reference_{n_ref}_seed{args.seed}.npy")
  if os.path.exists(cache):
    ref = np.load(cache)
  else:
    idx = np.sort(np.random.default_rng(args.seed).choice(len(arr), n_ref, replace=False))
    ref = fid.inception_features(inception, arr[idx], preprocessing="tf")
    np.save(cache, ref)
  mu, sigma = fid.statistics(ref)
  settings = [("euler", int(s)) for s in args.fid_euler.split(",") if s] + [("dopri5", args.tol)]
  rows = []
  for method, wd in workdirs.items():
    run, params, step = recipe.load(wd)
    sample_x0 = recipe.x0_sampler(run.config, run.shape)
    for solver, value in settings:
      ode = (dict(rtol=value, atol=value, steps=None) if solver == "dopri5"
             else dict(rtol=1e-5, atol=1e-5, steps=value))
      feats, info = image_metrics.features_of_run(run, params, sample_x0, inception, num=args.fid_num,
                                                  seed=args.seed, solver=solver, progress=False, **ode)
      f = image_metrics.fid_of_features(feats, mu, sigma, subsets=5)
      k = image_metrics.kid_of_features(feats, ref, args.seed)
      rows.append({"method": method, "step": step, "solver": solver, "setting": value, "nfe": info["nfe"],
                   "fid": f["value"], "fid_std": f["fid_subsets_std"], "kid": k["value"], "kid_std": k["kid_std"],
                   "num": args.fid_num, "ref": n_ref})
      print(f"{method} {solver} {value}: NFE {info['nfe']:.0f}, FID {f['value']:.2f}, KID {k['value']:.5f}",
            flush=True)
  return rows


def _sweep_figure(path, rows):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
  for ax, key, label in ((axes[0], "fid", "FID"), (axes[1], "kid", "KID")):
    for method in METHODS:
      eu = [(r["nfe"], r[key]) for r in rows if r["method"] == method and r["solver"] == "euler"]
      dp = [(r["nfe"], r[key]) for r in rows if r["method"] == method and r["solver"] == "dopri5"]
      line, = ax.plot(*zip(*eu), "-o", label=f"{method} euler") if eu else (None,)
      if dp:
        ax.plot(*zip(*dp), "s", ms=9, mfc="none", color=line.get_color() if line else None,
                label=f"{method} dopri5")
    ax.set_xscale("log")
    nfes = sorted({round(r["nfe"]) for r in rows})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
  r = rows[0]
  fig.suptitle(f"N = {r['num']} samples vs {r['ref']} train images (16 px, JPEG copy), tf preprocessing", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="demo_images")
  parser.add_argument("--data-path", default="", help="image folder or tarball (default: the config's)")
  parser.add_argument("--steps", type=int, default=1500, help="train steps (0: the smoke config's 600)")
  parser.add_argument("--tol", type=float, default=1e-3, help="dopri5 rtol = atol of the final samples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="tiny budget (tests)")
  parser.add_argument("--fid-num", type=int, default=None, help="FID/KID samples per method and setting "
                                                                "(default 500; --smoke: 0 = none)")
  parser.add_argument("--fid-ref", type=int, default=1000, help="reference training images for FID/KID")
  parser.add_argument("--fid-euler", default="4,16", help="Euler steps of the FID/KID sweep")
  args = parser.parse_args(argv)
  if args.fid_num is None:
    args.fid_num = 0 if args.smoke else 500
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  results, panels, workdirs = {}, [], {}
  for method in METHODS:
    config = _config(args, method)
    workdir = os.path.join(args.workdir, method)
    workdirs[method] = workdir
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
  rows = _fid_kid(args, config, workdirs)
  if rows:
    lines += ["", f"FID and KID: {args.fid_num} samples per method and setting from the same noise, against "
              f"{rows[0]['ref']} random training images at 16 px (numpy default_rng({args.seed})), tf "
              f"preprocessing, fm commit {provenance.commit_label()}. FID's ± is the std over 5 disjoint subsets "
              f"of {args.fid_num // 5}; KID's the std over 100 subsets of {min(1000, args.fid_num, rows[0]['ref'])}. "
              f"At this N, FID is mostly bias (docs/fid.md): compare methods, not with published numbers.", "",
              "| method | solver | steps / tol | NFE | FID | KID × 1e3 |", "|---|---|---|---|---|---|"]
    for r in rows:
      lines.append(f"| {r['method']} | {r['solver']} | {r['setting']:g} | {r['nfe']:.0f} | {r['fid']:.2f} ± "
                   f"{r['fid_std']:.2f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} |")
    _sweep_figure(os.path.join(args.workdir, "fid_sweep.png"), rows)
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  _figure(os.path.join(args.workdir, "figure.png"), panels)
  print(table)
  print(f"wrote {args.workdir}/results.md and figure.png in {time.time() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
