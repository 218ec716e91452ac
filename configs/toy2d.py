"""2D toy flow matching (Tong et al. 2024 protocol): MLP 3x64 SELU, AdamW 1e-3, 20k steps, batch 512.

Command (defaults; 2-core CPU, measured: icfm/rf/fm/vp ~2000 steps/s, so ~15 s for
20k steps; otcfm/sbcfm are bound by the per-batch OT solve, ~110 and ~60 steps/s at
batch 512, so ~3 and ~6 minutes):

  fm train --config configs/toy2d.py --workdir runs/ot \
      --config.method=otcfm --config.data.task=8gaussians->moons
  fm eval --workdir runs/ot

  # OT-CFM with an entropic (Sinkhorn) plan on the same linear path:
  fm train --config configs/toy2d.py --workdir runs/sk \
      --config.coupling.name=sinkhorn --config.coupling.epsilon=0.05

Expected (`eval.json`, measured with these defaults, seed 0, 8gaussians->moons):
W2(1000 dopri5 samples, 1000 held-out targets) = 0.279 for otcfm and 0.303 for
icfm; dopri5 NFE at rtol = atol = 1e-5: 68 for otcfm, 110 for icfm; normalised
path energy 0.005 (otcfm) vs 1.34 (icfm). Two independent 1000-sample draws of
moons are themselves at W2 ~0.30, so both are at the metric's floor.

Variants (`--config configs/toy2d.py:VARIANT`):
  smoke   300 steps on batch 64 with a short EMA (0.99: a 100-step horizon, so the
          result is the trained network, not its initialisation), for tests and a
          quick look (seconds). Measured, seed 0, 8gaussians->moons: W2 0.60 for
          otcfm and 0.77 for icfm, against 5.65 for the untrained network and 2.62
          between source and target.
  reflow  2-rectified flow: `--config.reflow.teacher=runs/rf1` (a finished
          `method=rf` run on the same task). `reflow.num_pairs` teacher pairs
          (z0, ODE(z0)) are generated once with `reflow.solver` and stored in
          the workdir, then minibatches are drawn from them.
"""
import ml_collections


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.method = "otcfm"          # a preset (fm.methods.PRESETS): fills in the names and sigma left None below
  c.seed = 0
  # Component sections: `name` (None = the method's) and only that component's options (see
  # docs/configuration.md); add one on the command line, e.g. --config.coupling.epsilon=0.05.
  c.coupling = ml_collections.ConfigDict({"name": None})   # fm.couplings.NAMES
  c.path = ml_collections.ConfigDict({"name": None, "sigma": None})   # fm.paths.NAMES; sigma: path noise
  c.time = ml_collections.ConfigDict({"name": None})       # "uniform" | "logit_normal" (options m, s)

  c.data = ml_collections.ConfigDict()
  c.data.name = "toy"
  c.data.task = "8gaussians->moons"  # "source->target", toys from fm.data.toys.NAMES

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.width = 64
  c.model.depth = 3
  c.model.activation = "selu"
  c.model.num_classes = 0     # > 0: a class-conditional run (labels from the data; fm.guidance)

  # Class-conditional runs only (model.num_classes > 0), see docs/conditional.md.
  c.cond = ml_collections.ConfigDict()
  c.cond.drop_prob = 0.0      # training: label -> null class with this probability (needed for guidance)
  c.cond.guidance = 1.0       # sampling/eval default scale s: v(null) + s (v(y) - v(null)); 1 = conditional

  c.train = ml_collections.ConfigDict()
  c.train.steps = 20_000
  c.train.batch_size = 512
  c.train.lr = 1e-3
  c.train.optimizer = "adamw"     # "adam" | "adamw"
  c.train.weight_decay = 0.01     # adamw only (PyTorch's AdamW default)
  c.train.schedule = "constant"   # after warmup: "constant" | "cosine" (to 0 at train.steps)
  c.train.warmup_steps = 0
  c.train.grad_clip = 0.0         # global-norm clipping; 0 = off
  c.train.ema_decay = 0.999
  c.train.steps_per_call = 100    # train steps per jitted dispatch (lax loop on device)
  c.train.log_every = 500
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 1000   # generated and held-out target samples for W2
  c.eval.seed = 0
  c.eval.rtol = 1e-5          # dopri5 tolerances for W2 and NFE
  c.eval.atol = 1e-5
  c.eval.euler_steps = 100    # fixed-step W2 and the path-energy trajectory
  c.eval.at_end = True        # fm train finishes with fm eval (workdir/eval.json)
  c.eval.metrics = "w2,path_energy"   # computed at the end (fm.evaluate.registry; fm eval --metrics for more)

  c.reflow = ml_collections.ConfigDict()
  c.reflow.teacher = ""       # workdir of a finished rf run; "" = ordinary training
  c.reflow.num_pairs = 100_000
  c.reflow.solver = "dopri5"
  c.reflow.rtol = 1e-5
  c.reflow.atol = 1e-5
  c.reflow.steps = 100        # for fixed-step reflow solvers

  if variant in (None, ""):
    pass
  elif variant == "smoke":
    c.train.steps = 300
    c.train.batch_size = 64
    c.train.steps_per_call = 50
    c.train.log_every = 100
    c.train.checkpoint_every = 100
    c.train.ema_decay = 0.99   # the default 0.999 would still be ~75% initialisation after 300 steps
    c.eval.num_samples = 200
    c.eval.euler_steps = 20
    c.reflow.num_pairs = 2000
  elif variant == "reflow":
    c.method = "rf"
  else:
    raise ValueError(f"unknown variant {variant!r}; valid variants: smoke, reflow")
  return c
