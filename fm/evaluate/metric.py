"""The metric interface: what `fm eval`, the end-of-training evaluation and `fm sweep` ask of a metric.

A metric is one class (big_vision's evaluators are the model) that says

  name        how `--metrics` / `config.eval.metrics` call it;
  kinds       the run kinds it serves ("points": the 2D toys, "images");
  needs       what it needs, in words (for `docs/evaluation.md` and `fm eval --help`);
  sweepable   whether `fm eval --nfe-sweep` may compute it at each solver setting;
  default     whether `fm eval` without `--metrics` computes it;
  sweep_default  whether `fm eval --nfe-sweep` without `--metrics` computes it
              (if no metric of the kind says so: the first sweepable one);

and implements `prepare(ctx)` (load what it needs once; return the sentence saying
why it cannot run here, or None) and `compute(ctx, solver, rtol, atol, steps)`
(a dict with `value`, `nfe` and whatever else describes the number). `summary`
maps a record to the flat keys of `eval.json`. The driver (`fm.evaluate.runner`)
adds the common fields (step, method, data, seed, solver settings, time,
provenance) and appends the record to `eval.jsonl`.

`Context` is one checkpoint of one run and the settings the metrics share; it
also memoises inputs several metrics use (`ctx.shared`: the Inception network,
reference statistics, held-out images).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

from fm import recipe
from fm.evaluate import fid

__all__ = ["Options", "Context", "Metric", "SAMPLE_METRICS", "check_sampler", "sde_noise", "sde_kwargs"]

_DEFAULT_DIVERGENCE = {"images": "hutchinson", "points": "exact"}


@dataclasses.dataclass(frozen=True)
class Options:
  """What an evaluation was asked for; None means the run's `eval` section or the metric's default."""
  metrics: tuple[str, ...] | None = None
  num: int | None = None
  seed: int | None = None
  solver: str = "dopri5"
  rtol: float | None = None
  atol: float | None = None
  steps: int | None = None
  step: int | None = None
  batch_size: int | None = None
  fid_stats: str | None = None
  inception: str | None = None
  fid_batch_size: int = 50
  fid_preprocessing: str = fid.DEFAULT_PREPROCESSING   # "tf" | "pytorch-fid" (FID and KID)
  fid_subsets: int = 5                                  # FID's spread over disjoint subsets (0: none)
  fid_ref_num: int | None = None   # reference from the training source: a random subset of this many images (None: all)
  bpd_num: int = 10_000
  bpd_batch_size: int = 64
  divergence: str | None = None
  num_probes: int = 1
  progress: bool = True
  guidance: float | None = None   # conditional runs: None = the run's cond.guidance
  sde_noise: float | None = None   # SDE solvers: the diffusion scale (None: 1)


SAMPLE_METRICS = ("w2", "fid", "kid")   # metrics of samples alone: any sampler (ODE, SDE, MeanFlow) serves them


def check_sampler(ctx, solver: str) -> None:
  """UserError (the sentence `fm sample` gives) unless `solver` can sample the context's run.

  The run's source: the toy task's for points, N(0, I) ("gaussian") for images.
  """
  from fm.data import toys  # pylint: disable=g-import-not-at-top
  from fm.evaluate import toy  # pylint: disable=g-import-not-at-top
  source = toys.parse_task(ctx.run.config.data.task)[0] if ctx.kind == "points" else "gaussian"
  toy.check_sampler(ctx.run, solver, source)


def sde_noise(opts: "Options", solver: str) -> float | None:
  """The diffusion scale an SDE solver samples at (`--sde-noise`, default 1); None for other solvers."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  if solver not in solvers.SDE_SOLVERS:
    return None
  return 1.0 if opts.sde_noise is None else float(opts.sde_noise)


def sde_kwargs(ctx, solver: str, source: str) -> dict[str, Any]:
  """`{noise, path}` for an SDE solver (after `fm.evaluate.toy.check_sampler`), else {}."""
  from fm.evaluate import toy  # pylint: disable=g-import-not-at-top
  toy.check_sampler(ctx.run, solver, source)
  noise = sde_noise(ctx.opts, solver)
  if noise is None:
    return {}
  return {"noise": noise, "path": ctx.run.method.path}


class Context:
  """A run's checkpoint (`run`, `params`, `step`, `kind`) and the settings its metrics share."""

  def __init__(self, workdir: str, opts: Options, loaded: tuple | None = None):
    self.workdir, self.opts = workdir, opts
    self.run, self.params, self.step = loaded if loaded is not None else recipe.load(workdir, opts.step)
    info = recipe.read_source_info(workdir)
    self.kind = info["kind"]
    self.eval_config = ec = self.run.config.eval
    self.seed = ec.seed if opts.seed is None else opts.seed
    self.rtol = float(ec.get("rtol", 1e-5) if opts.rtol is None else opts.rtol)
    self.atol = float(ec.get("atol", 1e-5) if opts.atol is None else opts.atol)
    self.batch_size = opts.batch_size or ec.get("batch_size", 256)
    self.divergence = opts.divergence or _DEFAULT_DIVERGENCE[self.kind]
    self.base = {"step": self.step, "method": self.run.config.method, "data": info["description"],
                 "seed": self.seed}
    # A conditional run (docs/conditional.md): its metrics sample at `guidance`, recorded in every record.
    self.num_classes = self.run.model.num_classes or 0
    self.class_probs = info.get("class_probs")
    self.source_info = info
    self.guidance = 1.0
    if self.num_classes:
      self.set_guidance(recipe.cond_settings(self.run.config)[1] if opts.guidance is None else opts.guidance)
    self._shared: dict[str, Any] = {}

  def set_guidance(self, guidance: float) -> None:
    """The guidance scale the metrics sample at from now on (conditional runs; a guidance sweep)."""
    self.guidance = float(guidance)
    self.base["guidance"] = self.guidance

  def num(self, metric: "Metric") -> int:
    """`--num` if given, else the metric's default for this run."""
    return self.opts.num if self.opts.num is not None else metric.default_num(self)

  def shared(self, key: str, make: Callable[[], Any]) -> Any:
    """`make()` once per evaluation for every metric that asks for `key`."""
    if key not in self._shared:
      self._shared[key] = make()
    return self._shared[key]


class Metric:
  """One metric; subclasses set the class attributes and implement `prepare` and `compute`."""

  name: ClassVar[str]
  kinds: ClassVar[tuple[str, ...]]
  needs: ClassVar[str]
  sweepable: ClassVar[bool] = True
  default: ClassVar[bool] = True
  sweep_default: ClassVar[bool] = False

  def check(self, opts: Options) -> None:
    """ValueError (one sentence) for an option this metric cannot use; touches nothing."""
    del opts

  def default_num(self, ctx: Context) -> int:
    """Samples when `--num` is not given: the run's `eval.num_samples`."""
    return ctx.eval_config.num_samples

  def prepare(self, ctx: Context) -> str | None:
    """Loads what the metric needs; the sentence saying why it cannot run here, or None."""
    del ctx
    return None

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    """`{"value", "nfe", ...}` at one solver setting; `solver`/`rtol`/`atol`/`steps` keys override the asked ones."""
    raise NotImplementedError

  def summary(self, record: dict[str, Any]) -> dict[str, Any]:
    """The keys this metric's record contributes to `eval.json`'s flat view."""
    return {self.name: record["value"]}
