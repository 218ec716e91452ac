"""Times the jitted training step of the smoke configs (unconditional and, if supported, conditional).

  .venv/bin/python experiments/conditional/step_time.py [--conditional] [--config configs/cifar10.py:smoke]

Builds the trainer's own `multi_step` (`fm.recipe` + `fm.train.step`, as
`fm.experiment` does), compiles it once, then times `--chunks` dispatches of
`--steps` steps each and prints the median steps/s. Used for issue 14's "no
speed cost" check: run it from a checkout of the code before and after (put the
checkout first on PYTHONPATH) and on the same machine at the same time.
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/cifar10.py:smoke")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--chunks", type=int, default=5)
  p.add_argument("--set", action="append", default=[], help="KEY=VALUE override")
  args = p.parse_args()
  import fm
  from fm import config as config_lib, recipe
  from fm.train import step as step_lib
  print("fm from", os.path.dirname(fm.__file__))
  config = recipe.resolve(config_lib.apply_overrides(config_lib.load(args.config),
                                                     [s.split("=", 1) for s in args.set]))
  tc = config.train
  source, _ = recipe.make_source(config)
  run = recipe.build(config, source.shape)
  multi = jax.jit(step_lib.make_multi_step(recipe.loss_fn(run), run.optimizer, source.batch_fn, tc.ema_decay),
                  donate_argnums=0)
  state = run.init_state()
  data = source.data
  t = time.time()
  state, stats = multi(state, np.int32(1), data)
  jax.block_until_ready(stats)
  print(f"compile+1 step: {time.time() - t:.1f} s")
  rates = []
  for _ in range(args.chunks):
    t = time.time()
    state, stats = multi(state, np.int32(args.steps), data)
    jax.block_until_ready(stats)
    rates.append(args.steps / (time.time() - t))
  print(f"{args.config} {' '.join(args.set)}: median {statistics.median(rates):.2f} steps/s "
        f"(chunks: {', '.join(f'{r:.2f}' for r in rates)})")


if __name__ == "__main__":
  main()
