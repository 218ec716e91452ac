"""CIFAR-10 flow matching: TorchCFM's recipe (ADM UNet 35.7M params), a DiT-S/2 variant, a CPU smoke run.

Commands:

  fm train --config configs/cifar10.py --workdir runs/c10-ot --config.method=otcfm
  fm train --config configs/cifar10.py:dit --workdir runs/c10-dit
  fm train --config configs/cifar10.py:smoke --workdir runs/smoke     # tiny UNet, minutes on a 2-core CPU
  fm sample --workdir runs/c10-ot --solver dopri5 --rtol 1e-5 --atol 1e-5 --num 50000 --out samples.npz
  fm sample --workdir runs/c10-ot --solver euler --steps 100 --num 64 --seed 0 --out grid.npz

Data: `data.path` is an image folder or a tarball of one (class sub-folders,
`train/` and `test/` splits), read once into a uint8 cache and held on device;
the default is the offline JPEG copy `../shared/data/cifar10-jpeg.tar.gz` (a
JPEG re-encoding: its FID is NOT comparable with published CIFAR-10 numbers).
`--config.data.path= --config.data.dataset=cifar10` reads tensorflow-datasets
instead (online users; `pip install fm[tfds]` to download and prepare).

Default (TorchCFM's `train_cifar10.py`): UNet 128 ch, 2 res blocks, mult
(1, 2, 2, 2), attention at 16x16, 64-channel heads, dropout 0.1; Adam 2e-4,
linear warmup 5000 steps then constant, gradient clipping 1.0, batch 128,
400k steps, EMA 0.9999, sigma = 0, uniform t, random horizontal flips.
Expected: TorchCFM reports FID 3.5 (OT-CFM, dopri5 at 1e-5, 50k samples vs the
CIFAR-10 train set, clean-fid legacy_tensorflow) after 400k steps on one GPU
(~60 h on a V100). No GPU was available to this work: the full recipe was not
run here, and its time per step on a GPU is not measured
(`experiments/benchmarks/unet_vs_torchcfm.py --preset cifar --device cuda` measures it).

Variants (`--config configs/cifar10.py:VARIANT`):
  cond   class-conditional: the same UNet with a label embedding (model.num_classes = 10,
         plus the null class), labels dropped with probability cond.drop_prob = 0.1 for
         classifier-free guidance; sample with `fm sample --classes all --guidance 1.5`
         (docs/conditional.md). The smoke run made conditional:
         `--config configs/cifar10.py:smoke --config.model.num_classes=10 --config.cond.drop_prob=0.1`.
  dit    DiT-S/2 (depth 12, hidden 384, 6 heads, patch 2), bfloat16 compute; model.size is a preset,
         model.depth / hidden_size / num_heads / patch_size (0 = from size) override it.
  meanflow        MeanFlow (1-NFE) with the paper's CIFAR-10 recipe (Geng et al. 2025, and the
                  official PyTorch port's cifar10 script): batch 1024, Adam 6e-4, warmup 10k steps,
                  800k steps, dropout 0.2, EMA 0.99995 (as read from the paper; unverified against its
                  code), (t, r) logit-normal (-2, 2) with 75 % r != t,
                  adaptive weight p = 0.75 (the meanflow preset's defaults). The paper's UNet is a
                  55M-parameter DDPM++; this variant keeps fm's TorchCFM ADM UNet (35.7M). Reported:
                  1-NFE FID 2.92. NOT RUN HERE: no accelerator was lent to this work. Sample with
                  `fm sample --workdir W --solver meanflow --steps 1`.
  meanflow_smoke  the smoke run below with method meanflow (docs/meanflow.md's CPU grid).
  smoke  a tiny UNet (32 ch, mult (1, 2), 1 res block, attention at 8x8) on
         16x16 downscaled images, 600 steps at batch 32: measured 8.4 steps/s
         (~40 s to compile) on a 2-core CPU, about 2 minutes in all; blurry
         colour scenes (`make demo-images` runs it for 1500 steps).
"""
import os

import ml_collections

_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                       "cifar10-jpeg.tar.gz")


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.method = "icfm"            # a preset (fm.methods.PRESETS): fills in the names left None below
  c.seed = 0
  # Component sections: `name` (None = the method's) and only that component's options (see
  # docs/configuration.md); add one on the command line, e.g. --config.coupling.name=sinkhorn.
  c.coupling = ml_collections.ConfigDict({"name": None})   # fm.couplings.NAMES
  c.path = ml_collections.ConfigDict({"name": None, "sigma": 0.0})   # TorchCFM's CIFAR recipe: sigma = 0
  c.time = ml_collections.ConfigDict({"name": None})       # "uniform" | "logit_normal" (options m, s)

  c.data = ml_collections.ConfigDict()
  c.data.name = "images"
  c.data.path = os.path.normpath(_SHARED)  # image folder or tarball; "" = data.dataset via tfds
  c.data.dataset = "cifar10"               # tensorflow-datasets name, used when data.path is ""
  c.data.split = "train"
  c.data.hflip = True
  c.data.image_size = 0                    # 0 = as stored; else downscale once (area filter)
  c.data.limit = 0                         # 0 = all images; else the first N (sorted)

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.num_channels = 128
  c.model.num_res_blocks = 2
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.attention_resolutions = (16,)
  c.model.num_heads = 4
  c.model.num_head_channels = 64
  c.model.dropout = 0.1
  c.model.dtype = "float32"                # "bfloat16": bf16 compute, float32 params and norms
  c.model.num_classes = 0     # > 0: a class-conditional run (labels from the data; fm.guidance)

  # Class-conditional runs only (model.num_classes > 0), see docs/conditional.md.
  c.cond = ml_collections.ConfigDict()
  c.cond.drop_prob = 0.0      # training: label -> null class with this probability (needed for guidance)
  c.cond.guidance = 1.0       # sampling/eval default scale s: v(null) + s (v(y) - v(null)); 1 = conditional

  c.train = ml_collections.ConfigDict()
  c.train.steps = 400_000
  c.train.batch_size = 128
  c.train.lr = 2e-4
  c.train.optimizer = "adam"
  c.train.weight_decay = 0.0
  c.train.schedule = "constant"
  c.train.warmup_steps = 5000
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.steps_per_call = 100
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 5000         # fixed-noise sample grid (PNG + TensorBoard) every N steps; 0 = never
  c.eval.grid_steps = 20      # Euler steps of that grid
  c.eval.num_samples = 64     # end-of-training dopri5 samples (grid, NFE)
  c.eval.batch_size = 256
  c.eval.seed = 0
  c.eval.rtol = 1e-5
  c.eval.atol = 1e-5
  c.eval.at_end = True
  c.eval.metrics = "grid"     # at the end (fm.evaluate.registry): "grid,fid" adds FID
  c.eval.fid_num = 50_000     # generated images per FID (at the end and fm eval's default)

  c.reflow = ml_collections.ConfigDict()
  c.reflow.teacher = ""
  c.reflow.num_pairs = 50_000
  c.reflow.solver = "dopri5"
  c.reflow.rtol = 1e-5
  c.reflow.atol = 1e-5
  c.reflow.steps = 100

  if variant in (None, ""):
    pass
  elif variant == "dit":
    # `size` is a preset of (depth, hidden_size, num_heads, patch_size); a non-zero entry overrides it.
    c.model = ml_collections.ConfigDict({"name": "dit", "size": "S/2", "depth": 0, "hidden_size": 0,
                                         "num_heads": 0, "patch_size": 0, "dtype": "bfloat16",
                                         "num_classes": 0})
    c.train.grad_clip = 1.0
  elif variant == "cond":
    c.model.num_classes = 10   # TorchCFM's class_cond UNet (plus the null-class row)
    c.cond.drop_prob = 0.1
  elif variant == "meanflow":
    c.method = "meanflow"
    c.model.dropout = 0.2
    c.train.batch_size = 1024
    c.train.lr = 6e-4
    c.train.warmup_steps = 10_000
    c.train.steps = 800_000
    c.train.ema_decay = 0.99995
    c.train.grad_clip = 0.0
  elif variant in ("smoke", "meanflow_smoke"):
    c.data.image_size = 16
    c.model.num_channels = 32
    c.model.num_res_blocks = 1
    c.model.channel_mult = (1, 2)
    c.model.attention_resolutions = (8,)
    c.model.num_heads = 1
    c.model.num_head_channels = -1
    c.model.dropout = 0.0
    c.train.steps = 600
    c.train.batch_size = 32
    c.train.lr = 1e-3
    c.train.warmup_steps = 50
    c.train.ema_decay = 0.99
    c.train.steps_per_call = 50
    c.train.log_every = 50
    c.train.checkpoint_every = 200
    c.eval.every = 200
    c.eval.num_samples = 64
    c.eval.rtol = 1e-3
    c.eval.atol = 1e-3
    if variant == "meanflow_smoke":
      c.method = "meanflow"
  else:
    raise ValueError(f"unknown variant {variant!r}; valid variants: cond, dit, meanflow, meanflow_smoke, smoke")
  return c
