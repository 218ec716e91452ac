"""Global exact OT at large batch on CPU: time and peak memory of one coupling, n = 1k ... 16k.

    python experiments/benchmarks/ot_scaling.py                  # d = 3072, n = 1024 ... 16384
    python experiments/benchmarks/ot_scaling.py --sizes 1024,2048 --d 2

Each n runs in a fresh subprocess: x0 ~ N(0, I) and x1 ~ U[-1, 1]^d (float32,
image-like), then one jitted `fm.couplings.make("exact")` call (the CPU
default: points to the host, float32 cost built in row blocks, compiled
auction) after a small warm-up. Printed per n: the end-to-end time of the call,
its parts measured again on the host (cost matrix build, auction), the peak
resident memory the call added (Linux VmHWM, reset before the call) against
the size of one float32 [n, n] matrix, and for n <= 2048 the cost gap to scipy's
exact LAP (float64). The load average before and after is printed: the
numbers are wall-clock on a shared machine.

    python experiments/benchmarks/ot_scaling.py --scopes           # global vs local, 4 devices

`--scopes`: in a subprocess with 4 forced host devices, one jitted exact
coupling of a batch sharded over the 4 devices with `scope="global"` (gather
2 [B, d], one B x B solve, re-shard) and `scope="local"` (four B/4 x B/4
solves, no communication), B = 1024 and 4096 at d = 3072. Forced host devices
share this CPU, so this measures the work, not an interconnect.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(field)


def child(n: int, d: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from fm import couplings  # pylint: disable=g-import-not-at-top
  from fm.couplings import base, host_auction  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((n, d), dtype=np.float32)
  x1 = rng.uniform(-1.0, 1.0, (n, d)).astype(np.float32)
  couple = jax.jit(couplings.make("exact"))
  key = jax.random.PRNGKey(0)
  jax.block_until_ready(couple(key, x0[:64], x1[:64]))  # numba + a small jit: warm
  x0d, x1d = jax.device_put(x0), jax.device_put(x1)
  lowered = couple.lower(key, x0d, x1d).compile()
  before = _status("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (peak RSS) to the current RSS
    f.write("5")
  t0 = time.perf_counter()
  _, x1p, info = jax.block_until_ready(lowered(key, x0d, x1d))
  e2e = time.perf_counter() - t0
  peak = _status("VmHWM") - before
  t0 = time.perf_counter()
  cost = base.sqdist_host(x0, x1)
  t_cost = time.perf_counter() - t0
  t0 = time.perf_counter()
  perm = host_auction.host_auction(cost)
  t_solve = time.perf_counter() - t0
  row = {"n": n, "d": d, "e2e_s": e2e, "cost_s": t_cost, "auction_s": t_solve,
         "peak_extra_MiB": peak / 2**20, "nn_float32_MiB": n * n * 4 / 2**20,
         "data_MiB": 2 * n * d * 4 / 2**20,
         "cost_before": float(info["cost_before"]), "cost_after": float(info["cost_after"])}
  assert sorted(perm.tolist()) == list(range(n))
  if n <= 2048:
    import scipy.optimize  # pylint: disable=g-import-not-at-top
    c64 = cost.astype(np.float64)
    r, s = scipy.optimize.linear_sum_assignment(c64)
    opt = c64[r, s].sum()
    row["gap_vs_scipy"] = float((c64[np.arange(n), perm].sum() - opt) / opt)
  return row


def scopes_child(sizes, d: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from fm import couplings  # pylint: disable=g-import-not-at-top
  from fm.train import partitioning  # pylint: disable=g-import-not-at-top
  mesh = partitioning.make_mesh()
  shards = partitioning.batch_sharding(mesh)
  key = jax.random.PRNGKey(0)
  print(f"| B | d | devices | global s | local s | global pair cost | local pair cost | all-gather MiB |")
  print("|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for n in sizes:
    x0 = jax.device_put(rng.standard_normal((n, d), dtype=np.float32), shards)
    x1 = jax.device_put(rng.uniform(-1.0, 1.0, (n, d)).astype(np.float32), shards)
    cells = []
    for scope in ("global", "local"):
      f = jax.jit(couplings.make("exact", mesh=mesh, scope=scope))
      jax.block_until_ready(f(key, x0, x1))
      t0 = time.perf_counter()
      _, _, info = jax.block_until_ready(f(key, x0, x1))
      cells.append((time.perf_counter() - t0, float(info["cost_after"])))
    print(f"| {n} | {d} | {mesh.size} | {cells[0][0]:.2f} | {cells[1][0]:.2f} | {cells[0][1]:.1f} | "
          f"{cells[1][1]:.1f} | {2 * n * d * 4 / 2**20:.0f} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1024,2048,4096,8192,16384")
  parser.add_argument("--d", type=int, default=3072)
  parser.add_argument("--scopes", action="store_true")
  parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--scopes-child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child is not None:
    print(json.dumps(child(args.child, args.d)))
    return
  if args.scopes_child:
    scopes_child([int(s) for s in args.sizes.split(",")], args.d)
    return
  if args.scopes:
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}", flush=True)
    sizes = "1024,4096" if args.sizes == parser.get_default("sizes") else args.sizes
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, __file__, "--scopes-child", "--sizes", sizes, "--d", str(args.d)],
                   env=env, check=True)
    print(f"load average after: {os.getloadavg()}")
    return
  print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}", flush=True)
  print("| n | d | e2e s | cost build s | auction s | peak extra MiB | one [n,n] f32 MiB | x0+x1 MiB | "
        "cost before -> after | gap vs scipy |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for n in (int(s) for s in args.sizes.split(",")):
    res = subprocess.run([sys.executable, __file__, "--child", str(n), "--d", str(args.d)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if res.returncode:
      print(f"| {n} | {args.d} | failed: {res.stderr.strip().splitlines()[-1]} |", flush=True)
      continue
    r = json.loads(res.stdout.strip().splitlines()[-1])
    gap = f"{r['gap_vs_scipy']:.1e}" if "gap_vs_scipy" in r else "-"
    print(f"| {n} | {r['d']} | {r['e2e_s']:.2f} | {r['cost_s']:.2f} | {r['auction_s']:.2f} | "
          f"{r['peak_extra_MiB']:.0f} | {r['nn_float32_MiB']:.0f} | {r['data_MiB']:.0f} | "
          f"{r['cost_before']:.1f} -> {r['cost_after']:.1f} | {gap} |", flush=True)
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
