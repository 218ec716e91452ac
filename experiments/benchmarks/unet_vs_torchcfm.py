"""Image training throughput: fm's UNet train step vs TorchCFM's, same architecture, batch and optimizer.

Both sides train TorchCFM's `UNetModelWrapper` architecture (fm's `unet` is the
same network, parameter for parameter) with TorchCFM's CIFAR-10 recipe around
it: Adam, linear warmup, gradient clipping at 1.0, an EMA of the parameters
after every step, sigma = 0, uniform t, random horizontal flips of uint8 images
scaled to [-1, 1]. Presets:

  tiny   TorchCFM's small UNet (32 ch, mult (1, 2, 2), 1 res block, attention at 16,
         1 head, dropout 0.1; 1,113,955 params), 32x32, batch 32: the CPU comparison.
  cifar  the full recipe (128 ch, mult (1, 2, 2, 2), 2 res blocks, attention at 16,
         64-ch heads, dropout 0.1; 35,746,307 params), batch 128: for a GPU.

fm runs the trainer's own step: `fm.recipe.build(config)` on
`configs/cifar10.py` and `jax.jit(make_multi_step(...), donate_argnums=0)`
with `steps_per_call` steps per dispatch, batches drawn inside the step from
the uint8 images held on device. TorchCFM runs the loop body of its
`examples/images/cifar10/train_cifar10.py` (zero_grad, noise, `sample_location_
and_conditional_flow`, MSE, backward, clip, Adam, LR schedule, its `ema`),
with the images already on the device as a float tensor (no DataLoader: that
can only favour TorchCFM). Both draw from the same 2048 random uint8 images.

Methods: icfm (TorchCFM `ConditionalFlowMatcher(0)`) and otcfm (TorchCFM
`ExactOptimalTransportConditionalFlowMatcher(0)`, POT's `ot.emd` on the host;
fm: its exact coupling on the host for CPU, the auction on accelerators). The
last table gives each side's OT-CFM step time over its I-CFM step time.

Throughput is the median of `--repeats` timed windows of about `--seconds`
each (windows interleaved across variants), after warmup (compilation for fm),
with a device sync at the end of each window.

    .bench_venv/bin/python experiments/benchmarks/unet_vs_torchcfm.py                 # CPU, tiny
    python experiments/benchmarks/unet_vs_torchcfm.py --preset cifar --device cuda \
        --fm-dtype float32,bfloat16                                                    # GPU, full recipe
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_vs_torchcfm import Runner, trainer_runner, window  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    "tiny": dict(model=dict(num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                            attention_resolutions=(16,), num_heads=1, num_head_channels=-1, dropout=0.1),
                 batch=32, steps_per_call=5),
    "cifar": dict(model=dict(num_channels=128, num_res_blocks=2, channel_mult=(1, 2, 2, 2),
                             attention_resolutions=(16,), num_heads=4, num_head_channels=64, dropout=0.1),
                  batch=128, steps_per_call=20),
}
NUM_IMAGES = 2048
LR, WARMUP, CLIP, EMA = 2e-4, 5000, 1.0, 0.9999


def _images(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (NUM_IMAGES, 32, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- fm

def make_fm_runner(method, preset, dtype, batch):
  import jax  # pylint: disable=g-import-not-at-top
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  from fm.data import images as images_data  # pylint: disable=g-import-not-at-top
  from fm import recipe
  from fm.train import step as step_lib  # pylint: disable=g-import-not-at-top

  p = PRESETS[preset]
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py"))
  overrides = {"method": method, "train.batch_size": batch, "train.steps_per_call": p["steps_per_call"],
               "model.dtype": dtype, **{f"model.{k}": v for k, v in p["model"].items()}}
  config = config_lib.apply_overrides(
      config, [(k, ",".join(map(str, v)) if isinstance(v, tuple) else str(v)) for k, v in overrides.items()])
  recipe.resolve(config)
  run = recipe.build(config, (32, 32, 3))
  batch_fn = images_data.image_batches(batch, hflip=True)
  multi_step = jax.jit(step_lib.make_multi_step(recipe.loss_fn(run), run.optimizer, batch_fn,
                                                config.train.ema_decay), donate_argnums=0)
  runner = trainer_runner(multi_step, run.init_state(), p["steps_per_call"],
                          {"images": jax.device_put(_images())})
  t0 = time.perf_counter()
  runner.chunk(); runner.sync()
  compile_s = time.perf_counter() - t0
  runner.chunk(); runner.sync()
  return runner, compile_s


# ------------------------------------------------------------------------- TorchCFM

def make_torch_runner(method, preset, device, threads, batch):
  import torch  # pylint: disable=g-import-not-at-top
  from torchcfm import conditional_flow_matching as cfm  # pylint: disable=g-import-not-at-top
  from torchcfm.models.unet.unet import UNetModelWrapper  # pylint: disable=g-import-not-at-top

  p = PRESETS[preset]
  torch.manual_seed(0)
  if device == "cpu":
    torch.set_num_threads(threads)
  m = dict(p["model"])
  m["attention_resolutions"] = ",".join(map(str, m["attention_resolutions"]))
  net = UNetModelWrapper(dim=(3, 32, 32), **m).to(device)
  ema_net = UNetModelWrapper(dim=(3, 32, 32), **m).to(device)
  ema_net.load_state_dict(net.state_dict())
  optim = torch.optim.Adam(net.parameters(), lr=LR)
  sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda s: min(s, WARMUP) / WARMUP)
  FM = {"icfm": cfm.ConditionalFlowMatcher(sigma=0.0),
        "otcfm": cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)}[method]
  data = torch.from_numpy(_images()).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
  box = {"loss": None}

  def ema_update():  # TorchCFM's `ema(source, target, decay)` over the state dicts
    src, tgt = net.state_dict(), ema_net.state_dict()
    for key in src:
      tgt[key].data.copy_(tgt[key].data * EMA + src[key].data * (1 - EMA))

  def step():
    optim.zero_grad()
    idx = torch.randint(0, NUM_IMAGES, (batch,), device=device)
    x1 = data[idx]
    flip = torch.rand(batch, device=device) < 0.5
    x1 = torch.where(flip[:, None, None, None], x1.flip(3), x1)
    x0 = torch.randn_like(x1)
    t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
    vt = net(t, xt)
    loss = torch.mean((vt - ut) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
    optim.step()
    sched.step()
    ema_update()
    box["loss"] = loss

  def sync():
    if device.startswith("cuda"):
      torch.cuda.synchronize()

  for _ in range(3):
    step()
  sync()
  return Runner(step, sync, 1, lambda: float(box["loss"].detach())), 0.0


# ----------------------------------------------------------------------------- main

def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
  ap.add_argument("--methods", default="icfm,otcfm")
  ap.add_argument("--batch", type=int, default=0, help="batch size (default: the preset's)")
  ap.add_argument("--device", default="cpu", help="torch device for TorchCFM (cpu, cuda)")
  ap.add_argument("--fm-dtype", default="float32", help="comma list of fm model.dtype values")
  ap.add_argument("--seconds", type=float, default=6.0, help="length of one timed window")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
  ap.add_argument("--no-torch", action="store_true", help="fm only (no benchmark environment)")
  a = ap.parse_args()
  warnings.filterwarnings("ignore")
  methods = a.methods.split(",")
  dtypes = a.fm_dtype.split(",")
  batch = a.batch or PRESETS[a.preset]["batch"]

  import jax  # pylint: disable=g-import-not-at-top
  variants = {}
  for method in methods:
    if not a.no_torch:
      variants[("TorchCFM", method, "float32")] = make_torch_runner(method, a.preset, a.device, a.threads, batch)
    for dt in dtypes:
      variants[("fm", method, dt)] = make_fm_runner(method, a.preset, dt, batch)

  n_chunks = {}
  for key, (runner, _) in variants.items():
    t0 = time.perf_counter()
    runner.chunk(); runner.sync()
    n_chunks[key] = max(1, math.ceil(a.seconds / max(time.perf_counter() - t0, 1e-6)))
  rates = {key: [] for key in variants}
  for _ in range(a.repeats):
    for key, (runner, _) in variants.items():
      rates[key].append(window(runner, n_chunks[key]))
  steps_s = {key: statistics.median(r) for key, r in rates.items()}

  from fm import provenance  # pylint: disable=g-import-not-at-top
  prov = provenance.record()
  torch_version = ""
  if not a.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = f", torch {torch.__version__} ({a.threads} threads on CPU)"
  print(f"# UNet train step, preset `{a.preset}` (batch {batch}, 32x32x3), "
        f"{datetime.date.today().isoformat()}\n")
  print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; JAX device "
        f"{jax.devices()[0].device_kind}; fm commit {prov.get('git_commit', '?')[:10]}"
        f"{' (dirty)' if prov.get('git_dirty') else ''}; jax {jax.__version__}{torch_version}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}. Median of {a.repeats} windows of ~{a.seconds:g} s.\n")
  print("| method | side | dtype | steps/s | images/s | fm / TorchCFM | final loss |")
  print("|---|---|---|---|---|---|---|")
  for (side, method, dt), (runner, _) in variants.items():
    ref = steps_s.get(("TorchCFM", method, "float32"))
    ratio = f"{steps_s[(side, method, dt)] / ref:.2f}x" if (ref and side == "fm") else ""
    print(f"| {method} | {side} | {dt} | {steps_s[(side, method, dt)]:.2f} | "
          f"{steps_s[(side, method, dt)] * batch:.1f} | {ratio} | {runner.last_loss():.4f} |")
  if "icfm" in methods and "otcfm" in methods:
    print("\n| side | dtype | OT-CFM step time / I-CFM step time |\n|---|---|---|")
    for (side, method, dt) in variants:
      if method == "otcfm":
        print(f"| {side} | {dt} | {steps_s[(side, 'icfm', dt)] / steps_s[(side, 'otcfm', dt)]:.3f} |")
  compiles = [f"{m}/{dt} {c:.0f} s" for (side, m, dt), (_, c) in variants.items() if side == "fm"]
  print(f"\nfm compile + first chunk: {', '.join(compiles)}.")


if __name__ == "__main__":
  main()
