"""Training throughput: fm's trainer step vs TorchCFM, same task/model/batch, one process.

Task 8gaussians->moons (2D), TorchCFM's `MLP(dim=2, w=64, time_varying=True)`
(3 hidden layers of 64, SELU) vs fm's `mlp` (width 64, depth 3, selu), batch
512, Adam lr 1e-3. Methods:

  icfm   TorchCFM ConditionalFlowMatcher(sigma=0.1)
  otcfm  TorchCFM ExactOptimalTransportConditionalFlowMatcher(sigma=0.1) (POT ot.emd on host)
  sbcfm  TorchCFM SchrodingerBridgeConditionalFlowMatcher(sigma=1.0, ot_method="sinkhorn")
         (entropic OT with reg = 2 sigma^2, which is what fm's sbcfm computes; TorchCFM's
         default ot_method="exact" would ignore reg and solve exact OT)

fm runs through the trainer's own code path (what `fm train` runs):
`fm.recipe.build(config)` on `configs/toy2d.py` plus
`jax.jit(fm.train.step.make_multi_step(...), donate_argnums=0)`, with data drawn
inside the jitted step. `fm K=<steps_per_call>` is the trainer default (several
steps per dispatch); `fm K=1` dispatches every step. The trainer's step also
updates an EMA of the parameters and checks the loss for NaN; TorchCFM's
notebook loop does neither, so fm does slightly more work per step.

TorchCFM runs the loop of its 2D notebooks: `torchcfm.utils.sample_8gaussians`
/ `sample_moons` every step, `sample_location_and_conditional_flow`, MSE,
backward, Adam. `sample_8gaussians` stacks its 512 samples in a Python loop, so
the table also has a "TorchCFM vec" column where that sampler is replaced by a
vectorised one (same distribution), to show how much of the gap is the sampler.

Throughput is the median over `--repeats` timed windows of about `--seconds`
each, after warmup (compile for fm), with `block_until_ready` at the end of
each window. torch uses `torch.set_num_threads(os.cpu_count())`.

    .bench_venv/bin/python experiments/benchmarks/train_vs_torchcfm.py
    .bench_venv/bin/python experiments/benchmarks/train_vs_torchcfm.py --methods icfm --seconds 1
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import statistics
import time
import warnings
from typing import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calibrate(runner, seconds):
  """Chunks per timed window of ~`seconds` (one timed chunk; also a warmup)."""
  runner.before()
  t0 = time.perf_counter()
  runner.chunk()
  runner.sync()
  dt = max(time.perf_counter() - t0, 1e-6)
  return max(1, int(math.ceil(seconds / dt)))


def window(runner, n_chunks):
  """steps/s over `n_chunks` chunks, synchronised at the end."""
  runner.before()
  t0 = time.perf_counter()
  for _ in range(n_chunks):
    runner.chunk()
  runner.sync()
  return n_chunks * runner.per_chunk / (time.perf_counter() - t0)


@dataclasses.dataclass
class Runner:
  chunk: Callable[[], None]
  sync: Callable[[], None]
  per_chunk: int
  last_loss: Callable[[], float]
  before: Callable[[], None] = lambda: None


# ----------------------------------------------------------------------------- fm

def make_fm_runner(method, task, batch, lr, steps_per_call):
  import jax
  from fm import config as config_lib
  from fm.data import toys
  from fm import recipe
  from fm.train import step as step_lib

  config = config_lib.load(os.path.join(ROOT, "configs", "toy2d.py"))
  config.method = method
  config.sigma = None          # method default: 0.1 for icfm/otcfm, 1.0 for sbcfm
  config.data.task = task
  config.train.batch_size = batch
  config.train.lr = lr
  K = config.train.steps_per_call if steps_per_call is None else steps_per_call
  recipe.resolve(config)
  run = recipe.build(config)
  batch_fn = toys.make_source(batch, task).batch_fn

  def loss_fn(params, key, x0, x1):
    return run.method.loss(run.model.apply, params, key, x0, x1)

  multi_step = jax.jit(
      step_lib.make_multi_step(loss_fn, run.optimizer, batch_fn, config.train.ema_decay),
      donate_argnums=0)
  runner = trainer_runner(multi_step, run.init_state(), K)
  runner.chunk(); runner.sync()   # compile + warm up
  runner.chunk(); runner.sync()
  return runner


def trainer_runner(multi_step, state, steps_per_call, data=None):
  """A Runner over fm's jitted `multi_step(state, K, data)` (also used by unet_vs_torchcfm.py)."""
  import jax
  box = {"state": state, "stats": None}
  n = np.int32(steps_per_call)

  def chunk():
    box["state"], box["stats"] = multi_step(box["state"], n, data)

  def sync():
    jax.block_until_ready(box["state"])

  def last_loss():
    s = jax.device_get(box["stats"])
    if s["failed"]:
      raise RuntimeError("fm training step failed (non-finite loss)")
    return float(s["sums"]["loss"] / max(int(s["count"]), 1))

  return Runner(chunk, sync, steps_per_call, last_loss)


# ------------------------------------------------------------------------ TorchCFM

def make_torch_runner(method, task, batch, lr, vectorized_sampler, threads):
  import torch
  from torchcfm import conditional_flow_matching as cfm
  from torchcfm.models.models import MLP
  from torchcfm import utils as tutils

  if vectorized_sampler:
    angles = torch.arange(8, dtype=torch.float32) * (math.pi / 4)
    centres = 5.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)

    def sample_8gaussians(n):  # TorchCFM's distribution (centres radius 5, cov sqrt(0.1) I), no loop
      idx = torch.randint(0, 8, (n,))
      return centres[idx] + 0.1 ** 0.25 * torch.randn(n, 2)
  else:
    sample_8gaussians = tutils.sample_8gaussians
  samplers = {
      "gaussian": lambda n: torch.randn(n, 2),
      "8gaussians": sample_8gaussians,
      "moons": tutils.sample_moons,
  }
  source, target = task.split("->")
  s0, s1 = samplers[source], samplers[target]

  if method == "icfm":
    FM = cfm.ConditionalFlowMatcher(sigma=0.1)
  elif method == "otcfm":
    FM = cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)
  elif method == "sbcfm":
    FM = cfm.SchrodingerBridgeConditionalFlowMatcher(sigma=1.0, ot_method="sinkhorn")
  else:
    raise ValueError(method)
  torch.manual_seed(0)
  np.random.seed(0)
  model = MLP(dim=2, w=64, time_varying=True)
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  box = {"loss": None}

  def step():  # the loop body of TorchCFM's 2D notebooks
    optimizer.zero_grad()
    x0 = s0(batch)
    x1 = s1(batch)
    t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
    vt = model(torch.cat([xt, t[:, None]], dim=-1))
    loss = torch.mean((vt - ut) ** 2)
    loss.backward()
    optimizer.step()
    box["loss"] = loss

  torch.set_num_threads(threads)
  for _ in range(5):  # warm up
    step()
  return Runner(step, lambda: None, 1, lambda: float(box["loss"].detach()),
                before=lambda: torch.set_num_threads(threads))


# --------------------------------------------------------------------------- main

def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--methods", default="icfm,otcfm,sbcfm")
  p.add_argument("--task", default="8gaussians->moons")
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--seconds", type=float, default=2.0, help="length of one timed window")
  p.add_argument("--repeats", type=int, default=3,
                 help="timed windows per variant, interleaved across variants (median reported)")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch.set_num_threads for the main TorchCFM column (default: core count)")
  p.add_argument("--steps-per-call", type=int, default=None,
                 help="fm K; default: the trainer's (configs/toy2d.py train.steps_per_call)")
  a = p.parse_args()

  warnings.filterwarnings("ignore")
  import jax
  import torch
  import torchcfm
  torch.set_num_threads(a.threads)

  from fm import config as config_lib
  default_k = config_lib.load(os.path.join(ROOT, "configs", "toy2d.py")).train.steps_per_call
  K = default_k if a.steps_per_call is None else a.steps_per_call
  T = a.threads

  print(f"# fm vs TorchCFM training throughput ({datetime.datetime.now().isoformat(timespec='minutes')})")
  print(f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, python "
        f"{platform.python_version()}, load average at start {os.getloadavg()[0]:.2f}")
  print(f"jax {jax.__version__} (backend {jax.default_backend()}), torch {torch.__version__} "
        f"(main column num_threads={T}), torchcfm {torchcfm.__version__}")
  print(f"task {a.task}, batch {a.batch}, Adam lr {a.lr}, MLP 3x64 SELU; fm K={K} steps per "
        f"dispatch (trainer default {default_k}); median of {a.repeats} interleaved windows of "
        f"~{a.seconds:g}s")
  print(flush=True)

  # name -> (description, factory). "torch" is the main TorchCFM column.
  variants = {
      "fm": (f"fm trainer step, K={K}", lambda m: make_fm_runner(m, a.task, a.batch, a.lr, K)),
      "fm1": ("fm trainer step, K=1", lambda m: make_fm_runner(m, a.task, a.batch, a.lr, 1)),
      "torch": (f"TorchCFM notebook loop, {T} threads",
                lambda m: make_torch_runner(m, a.task, a.batch, a.lr, False, T)),
      "torchvec": (f"TorchCFM, vectorised 8gaussians sampler, {T} threads",
                   lambda m: make_torch_runner(m, a.task, a.batch, a.lr, True, T)),
  }
  if T != 1:
    variants["torch_t1"] = ("TorchCFM notebook loop, 1 thread",
                            lambda m: make_torch_runner(m, a.task, a.batch, a.lr, False, 1))
    variants["torchvec_t1"] = ("TorchCFM, vectorised 8gaussians sampler, 1 thread",
                               lambda m: make_torch_runner(m, a.task, a.batch, a.lr, True, 1))

  rows = []
  for method in a.methods.split(","):
    runners = {name: make(method) for name, (_, make) in variants.items()}
    n_chunks = {name: calibrate(r, a.seconds) for name, r in runners.items()}
    rates = {name: [] for name in runners}
    for _ in range(a.repeats):
      for name, r in runners.items():
        rates[name].append(window(r, n_chunks[name]))
    med = {name: statistics.median(v) for name, v in rates.items()}
    for name, r in runners.items():
      spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
      print(f"  {method:6s} {variants[name][0]:52s} {med[name]:9.1f} steps/s  (range {spread}, "
            f"{n_chunks[name] * r.per_chunk} steps/window, last loss {r.last_loss():.3f})", flush=True)
    rows.append((method, med))
    del runners

  print(f"\nload average at end {os.getloadavg()[0]:.2f}\n")
  print(f"| method | fm steps/s (K={K}) | fm steps/s (K=1) | TorchCFM steps/s ({T} thr) "
        f"| **fm / TorchCFM** | best TorchCFM variant steps/s | fm / best TorchCFM |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for method, med in rows:
    best = max((n for n in med if n.startswith("torch")), key=lambda n: med[n])
    print(f"| {method} | {med['fm']:.0f} | {med['fm1']:.0f} | {med['torch']:.0f} "
          f"| **{med['fm'] / med['torch']:.1f}x** | {med[best]:.0f} ({best}) "
          f"| {med['fm'] / med[best]:.1f}x |")


if __name__ == "__main__":
  main()
