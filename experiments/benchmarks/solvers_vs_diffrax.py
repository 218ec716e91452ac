"""dopri5 speed: fm's own embedded-RK driver vs diffrax, same tolerances.

A small tanh MLP velocity field (d=2, B=1000), rtol=atol=1e-5, t in [0, 1],
both jitted and warmed up; reports min wall time (interleaved runs), steps, and the ratio.

  python experiments/benchmarks/solvers_vs_diffrax.py [--batch 1000] [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import fm


def make_field(key, d=2, hidden=64, scale=8.0):
  k1, k2, k3 = jax.random.split(key, 3)
  params = {
    "w1": jax.random.normal(k1, (d + 1, hidden)) / np.sqrt(d + 1),
    "w2": jax.random.normal(k2, (hidden, hidden)) / np.sqrt(hidden),
    "w3": jax.random.normal(k3, (hidden, d)) / np.sqrt(hidden),
  }

  def v(params, t, x):
    h = jnp.concatenate([x, jnp.broadcast_to(t, x.shape[:1] + (1,))], axis=-1)
    h = jnp.tanh(h @ params["w1"])
    h = jnp.tanh(h @ params["w2"])
    return scale * h @ params["w3"]

  return params, v


def timeit(fs, *args, repeats):
  """Min wall time of each f in fs; runs interleaved so load drifts hit both."""
  for f in fs:
    jax.block_until_ready(f(*args))  # compile + warm up
  ts = [[] for _ in fs]
  for _ in range(repeats):
    for f, acc in zip(fs, ts):
      s = time.perf_counter()
      jax.block_until_ready(f(*args))
      acc.append(time.perf_counter() - s)
  return [float(np.min(t)) for t in ts]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=1000)
  p.add_argument("--tol", type=float, default=1e-5)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--scale", type=float, default=8.0, help="field magnitude (stiffness)")
  a = p.parse_args()
  params, v = make_field(jax.random.PRNGKey(0), scale=a.scale)
  x0 = jax.random.normal(jax.random.PRNGKey(1), (a.batch, 2))

  @jax.jit
  def ours(params, x0):
    return fm.solvers.integrate(
      lambda t, x: v(params, t, x), x0, "dopri5", rtol=a.tol, atol=a.tol
    )

  @jax.jit
  def theirs(params, x0):
    sol = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: v(args, t, y)),
      diffrax.Dopri5(),
      t0=0.0,
      t1=1.0,
      dt0=None,
      y0=x0,
      args=params,
      stepsize_controller=diffrax.PIDController(rtol=a.tol, atol=a.tol),
      max_steps=4096,
    )
    return sol.ys[-1], sol.stats

  t_ours, t_theirs = timeit([ours, theirs], params, x0, repeats=a.repeats)
  x_ours, info = ours(params, x0)
  x_theirs, stats = theirs(params, x0)
  print(f"device={jax.devices()[0].platform} B={a.batch} d=2 rtol=atol={a.tol}")
  print(
    f"fm      : {t_ours * 1e3:8.2f} ms  steps={int(info['steps'])} "
    f"rejected={int(info['rejected'])} nfe={int(info['nfe'])}"
  )
  print(
    f"diffrax : {t_theirs * 1e3:8.2f} ms  steps={int(stats['num_accepted_steps'])} "
    f"rejected={int(stats['num_rejected_steps'])}"
  )
  print(f"ratio diffrax/fm = {t_theirs / t_ours:.2f}x")
  print(f"max |x_fm - x_diffrax| = {float(jnp.max(jnp.abs(x_ours - x_theirs))):.2e}")


if __name__ == "__main__":
  main()
