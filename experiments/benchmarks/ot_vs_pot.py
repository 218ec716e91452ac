"""Exact and entropic minibatch OT: fm (JAX) vs POT, printed as markdown.

Run in an environment that also has POT (see requirements-pot.txt):
    python experiments/benchmarks/ot_vs_pot.py
Data: x0 ~ N(0, I), x1 ~ N(0.5, I), cost = squared Euclidean distances.
Solver-only timings get the same cost matrix (POT: float64 numpy, fm: float32
jax array); "e2e" timings start from the points (cost matrix included).
Times are medians over repetitions after warm-up (jit compile excluded).
"""
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import ot

import fm

__all__ = ["main"]


def _time(fn, reps):
  fn()
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return 1e3 * statistics.median(ts)


def _block(f):
  return lambda *a: jax.block_until_ready(f(*a))


SOLVERS = ("host_auction", "reduced", "scipy", "auction")  # "host_auction" is `auto` on CPU


def main():
  sizes, dims = (128, 256, 512, 1024), (2, 3072)
  key = jax.random.PRNGKey(0)
  exact_rows, sk_rows = [], []
  solve = {s: jax.jit(lambda c, s=s: fm.couplings.assignment(c, s))
           for s in SOLVERS}
  cost_fn = jax.jit(fm.couplings.sqdist)
  e2e = jax.jit(fm.couplings.make("exact"))
  for d in dims:
    for n in sizes:
      rng = np.random.default_rng(n + d)
      x0 = rng.standard_normal((n, d)).astype(np.float32)
      x1 = (rng.standard_normal((n, d)) + 0.5).astype(np.float32)
      x0j, x1j = jnp.asarray(x0), jnp.asarray(x1)
      a = b = np.full(n, 1.0 / n)
      m64 = ot.dist(x0.astype(np.float64), x1.astype(np.float64))
      c32 = jax.block_until_ready(cost_fn(x0j, x1j))
      reps = 7 if n <= 512 else 5
      # --- exact
      t_pot = _time(lambda: ot.emd(a, b, m64), reps)
      pot_cost = float((ot.emd(a, b, m64) * m64).sum()) * n
      t_pot_e2e = _time(lambda: ot.emd(a, b, ot.dist(x0.astype(np.float64), x1.astype(np.float64))), reps)
      row = {"d": d, "n": n, "pot": t_pot, "pot_e2e": t_pot_e2e}
      for s, f in solve.items():
        f = _block(f)
        row[s] = _time(lambda: f(c32), reps if s != "auction" or n < 1024 else 3)
        perm = np.asarray(f(c32))
        row[s + "_rel"] = (m64[np.arange(n), perm].sum() - pot_cost) / pot_cost
      fe = _block(e2e)
      row["e2e"] = _time(lambda: fe(key, x0j, x1j), reps)
      exact_rows.append(row)
      # --- sinkhorn, same absolute eps (0.05 * std of the cost = fm default)
      eps = float(0.05 * m64.std())
      sk = jax.jit(lambda p, q: fm.couplings.plan(
          p, q, method="sinkhorn", epsilon=eps, threshold=1e-3, max_iterations=1000))
      fsk = _block(sk)
      t_fm = _time(lambda: fsk(x0j, x1j), 3)
      t_ps = _time(lambda: ot.sinkhorn(a, b, m64, eps, method="sinkhorn_log",
                                       stopThr=1e-3, numItermax=1000), 3)
      sk_rows.append({"d": d, "n": n, "eps": eps, "pot": t_ps, "fm": t_fm})

  print(f"# fm vs POT {ot.__version__} | jax {jax.__version__} "
        f"({jax.default_backend()}) | {platform.processor() or platform.machine()}\n")
  print("## Exact OT (solver only, same cost matrix; e2e = from points)\n")
  head = "| d | n | POT emd ms | " + " | ".join(f"fm {s} ms | speedup | rel cost" for s in SOLVERS)
  print(head + " | POT e2e ms | fm exact e2e ms | speedup e2e |")
  print("|---|---|---|" + "---|---|---|" * len(SOLVERS) + "---|---|---|")
  for r in exact_rows:
    cells = " | ".join(f"{r[s]:.1f} | {r['pot'] / r[s]:.2f}x | {r[s + '_rel']:.1e}" for s in SOLVERS)
    print(f"| {r['d']} | {r['n']} | {r['pot']:.1f} | {cells} | "
          f"{r['pot_e2e']:.1f} | {r['e2e']:.1f} | {r['pot_e2e'] / r['e2e']:.2f}x |")
  print("\n## Sinkhorn (log domain, eps = 0.05 std(cost) absolute, threshold 1e-3, "
        "max 1000 iterations; fm from points, POT from cost)\n")
  print("| d | n | eps | POT sinkhorn_log ms | fm sinkhorn ms | speedup |")
  print("|---|---|---|---|---|---|")
  for r in sk_rows:
    print(f"| {r['d']} | {r['n']} | {r['eps']:.3g} | {r['pot']:.1f} | {r['fm']:.1f} | "
          f"{r['pot'] / r['fm']:.2f}x |")


if __name__ == "__main__":
  main()
