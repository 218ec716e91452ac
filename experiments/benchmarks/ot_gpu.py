"""Exact OT on an accelerator: which solver should `make("exact")` default to? (needs a GPU/TPU run)

    python experiments/benchmarks/ot_gpu.py                       # solvers at B = 128, 512, 1024, 4096
    python experiments/benchmarks/ot_gpu.py --step                # + OT-CFM / I-CFM step time, CIFAR recipe

Candidates, all jitted, timed per call (median of `--repeats` after a warm-up),
on x0 ~ N(0, I) and x1 ~ U[-1, 1]^d (d = 3072, CIFAR-shaped):
  auction          pure-JAX epsilon-scaling auction on the device cost (today's accelerator default)
  host_points      host callback (`assignment_points`): 2 [B, d] to the host, float32 cost and the
                   compiled auction there, [B] permutation back (the CPU default)
  host_cost        host callback on the device-built [B, B] cost (`assignment(sqdist, "host_auction")`)
  sinkhorn+auction Sinkhorn (ott, eps = 0.01 std(cost)) then the JAX auction on the reduced cost
                   -log plan = (C - f - g) / eps (same optimal permutations as C; near-optimal duals
                   make the auction short), i.e. Sinkhorn rounded to an exact permutation
  sinkhorn         the entropic coupling alone (eps = 0.05 std(cost); not a permutation; for scale)
"gap" is the pairing cost over the exact optimum minus 1 (float64, host auction reference).

`--step`: with the CIFAR-10 UNet of configs/cifar10.py (needs `unet` in
fm.models), the jitted train step at batch `--batch` on synthetic data, for
icfm and for otcfm with each exact solver; prints OT-CFM / I-CFM step time
(the goal is <= 1.10). The default for accelerators is the fastest solver
with gap 0 at every size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fm import couplings  # noqa: E402
from fm.couplings import base, host_auction, sinkhorn  # noqa: E402


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def _sinkhorn_auction(x0, x1):
  log_plan, _ = sinkhorn.solve(x0, x1, relative=0.01, threshold=1e-3, max_iterations=2000)
  return couplings.auction(-log_plan)[0]


CANDIDATES = {
    "auction": lambda x0, x1: couplings.assignment(base.sqdist(x0, x1), "auction"),
    "host_points": lambda x0, x1: couplings.assignment_points(x0, x1, "host_auction"),
    "host_cost": lambda x0, x1: couplings.assignment(base.sqdist(x0, x1), "host_auction"),
    "sinkhorn+auction": _sinkhorn_auction,
}


def solvers(sizes, d, repeats):
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), d = {d}")
  print("| B | " + " | ".join(f"{c} ms (gap)" for c in CANDIDATES) + " | sinkhorn ms |")
  print("|---|" + "---|" * (len(CANDIDATES) + 1))
  rng = np.random.default_rng(0)
  for n in sizes:
    x0 = jax.device_put(rng.standard_normal((n, d), dtype=np.float32))
    x1 = jax.device_put(rng.uniform(-1, 1, (n, d)).astype(np.float32))
    c64 = base.sqdist_host(np.asarray(x0), np.asarray(x1)).astype(np.float64)
    ref = c64[np.arange(n), host_auction.host_auction(c64)].sum()
    cells = []
    for fn in CANDIDATES.values():
      f = jax.jit(fn)
      t = _time(f, x0, x1, repeats=repeats)
      perm = np.asarray(f(x0, x1))
      assert sorted(perm.tolist()) == list(range(n))
      cells.append(f"{1e3 * t:.1f} ({c64[np.arange(n), perm].sum() / ref - 1:.1e})")
    sk = jax.jit(lambda x0, x1: sinkhorn.solve(x0, x1, relative=0.05)[0])
    cells.append(f"{1e3 * _time(sk, x0, x1, repeats=repeats):.1f}")
    print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


def step_times(batch, repeats, steps_per_call=10):
  """Train-step time (ms) of the CIFAR-10 recipe for icfm and otcfm with each exact solver."""
  from fm import models  # pylint: disable=g-import-not-at-top
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  from fm import recipe
  from fm.train import step as step_lib  # pylint: disable=g-import-not-at-top
  if "unet" not in models.NAMES:
    print("--step: fm.models has no 'unet' yet; skipped")
    return
  shape = (32, 32, 3)

  def batch_fn(key, data):
    del data
    k0, k1 = jax.random.split(key)
    return (jax.random.normal(k0, (batch, *shape)),
            jax.random.uniform(k1, (batch, *shape), minval=-1.0, maxval=1.0))

  rows = {}
  for name, method, solver in [("icfm", "icfm", None)] + [
      (f"otcfm/{s}", "otcfm", s) for s in ("auction", "host_auction")]:
    config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py"))
    config.method, config.train.batch_size = method, batch
    if solver:
      config.coupling.solver = solver
    run = recipe.build(config, shape)
    f = jax.jit(step_lib.make_multi_step(recipe.loss_fn(run), run.optimizer, batch_fn,
                                         config.train.ema_decay), donate_argnums=0)
    state = run.init_state()
    state, _ = jax.block_until_ready(f(state, np.int32(steps_per_call), None))  # compile + warm
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      state, _ = jax.block_until_ready(f(state, np.int32(steps_per_call), None))
      ts.append((time.perf_counter() - t0) / steps_per_call)
    rows[name] = statistics.median(ts)
  base_t = rows["icfm"]
  print(f"\nCIFAR-10 recipe step time at batch {batch} ({jax.devices()[0].device_kind}):")
  for name, t in rows.items():
    print(f"  {name:22s} {1e3 * t:8.2f} ms   ratio to icfm {t / base_t:.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="128,512,1024,4096")
  parser.add_argument("--d", type=int, default=3072)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--step", action="store_true")
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args()
  solvers([int(s) for s in args.sizes.split(",")], args.d, args.repeats)
  if args.step:
    step_times(args.batch, args.repeats)


if __name__ == "__main__":
  main()
