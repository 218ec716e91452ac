"""CIFAR-10 smoke: 1-step MeanFlow beside I-CFM's Euler-1 and dopri5 grids, at equal (small) budget.

  .venv/bin/python experiments/sde/cifar_smoke.py --steps 300 --data-path ../shared/data/cifar10-jpeg.tar.gz \
      --out experiments/sde

Both runs use `configs/cifar10.py:smoke` (tiny UNet, 16x16 images, batch 32, lr 1e-3, EMA 0.99),
`method=icfm` and `method=meanflow`, and are trained here one jitted step per call. A MeanFlow
UNet differentiates through `jax.jvp`, which the CPU convolution's custom gradient does not
support (`Conv(jvp_safe=True)` uses XLA's), and XLA's convolution gradient is slow only inside
loops (CHANGELOG, 2026-12-06); one step per call keeps it out of a loop. `fm train` runs the same
recipe (`configs/cifar10.py:meanflow_smoke`) inside its multi-step loop, which on a CPU is slow.
Writes `cifar_<method>_<sampler>.png` grids (64 samples from the same noise) and `cifar_smoke.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fm import config as config_lib, recipe, solvers
from fm.data import images as images_lib
from fm.evaluate import images as images_eval, sampling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(method, steps, data_path):
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  config = recipe.resolve(config_lib.apply_overrides(config, [("method", method), ("data.path", data_path),
                                                              ("train.steps", str(steps))]))
  source, _ = recipe.make_source(config)
  run = recipe.build(config, source.shape)
  state = run.init_state()
  loss_fn = recipe.loss_fn(run)
  decay = config.train.ema_decay

  @jax.jit
  def step(state, data):
    key = jax.random.fold_in(state.key, state.step)
    k_data, k_loss = jax.random.split(key)
    x0, x1 = source.batch_fn(k_data, data)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, k_loss, x0, x1)
    updates, opt_state = run.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
    return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), loss

  start, losses = time.time(), []
  for i in range(steps):
    state, loss = step(state, source.data)
    if i % 50 == 0 or i == steps - 1:
      losses.append((i, float(loss)))
      print(method, i, losses[-1][1], f"{time.time() - start:.0f}s", flush=True)
  return run, state.ema_params, time.time() - start, losses, source


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--data-path", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
  ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "sde"))
  ap.add_argument("--methods", default="meanflow,icfm")
  args = ap.parse_args()
  res = {"steps": args.steps}
  for method in args.methods.split(","):
    run, params, secs, losses, source = train(method, args.steps, os.path.normpath(args.data_path))
    res[method] = {"train_s": round(secs), "losses": losses, "grids": {}}
    x0 = sampling.initial_points(source.sample_x0, jax.random.PRNGKey(0), 0, 64)
    plan = [("meanflow", {"steps": 1})] if method == "meanflow" else [("euler", {"steps": 1}),
                                                                      ("dopri5", {"rtol": 1e-3, "atol": 1e-3})]
    for solver, kw in plan:
      x1, info = sampling.generate(run.model, params, x0, solver, **kw)
      png = os.path.join(args.out, f"cifar_{method}_{solver}{kw.get('steps', '')}.png")
      images_eval.save_grid(png, images_lib.to_uint8(np.asarray(x1)))
      res[method]["grids"][os.path.basename(png)] = int(info["nfe"])
      print(method, solver, "NFE", int(info["nfe"]), png, flush=True)
    with open(os.path.join(args.out, "cifar_smoke.json"), "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
