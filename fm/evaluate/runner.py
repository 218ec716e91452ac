"""`fm eval`: metrics of a run's EMA checkpoint, appended to `workdir/eval.jsonl`, and NFE sweeps.

    records, skipped = runner.evaluate(workdir, runner.Options(metrics=("fid", "bpd"), num=50000))
    rows, paths, skipped = runner.sweep(workdir, "euler:1,2,5,10,20,50,100", runner.Options())

Metrics by kind of run (`source.json`):
  images  fid   FID of `num` generated images (default 50 000) against reference statistics:
                `fid_stats` (an .npz with mu, sigma) or computed from the run's training
                source and cached (`fm.evaluate.reference`); needs the Inception weights.
          bpd   bits/dim of `bpd_num` held-out images (`image_metrics.held_out`).
  points  w2    W2 of `num` samples (default `eval.num_samples`) to held-out target samples.
          path_energy  kinetic energy of the `eval.euler_steps` Euler trajectory (and NPE).
          nll   NLL (nats) of the held-out target samples, where the source density is known.

Unset options fall back to the run's `eval` section (seed, rtol, atol, batch size).
A metric that cannot be computed here (no Inception weights, no held-out images,
no closed-form source density) is skipped with one sentence, and the others run.
Each computed metric is one line of `eval.jsonl` (`records`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any

from fm import likelihood, solvers
from fm.evaluate import fid, image_metrics, nfe_sweep, records, reference, toy
from fm import recipe

__all__ = ["METRICS", "SWEEPABLE", "Options", "check", "Evaluator", "evaluate", "sweep"]

METRICS = {"images": ("fid", "bpd"), "points": ("w2", "path_energy", "nll")}
SWEEPABLE = {"images": ("fid", "bpd"), "points": ("w2", "nll")}
_DEFAULT_SWEEP = {"images": ("fid",), "points": ("w2",)}
_DEFAULT_DIVERGENCE = {"images": "hutchinson", "points": "exact"}


@dataclasses.dataclass(frozen=True)
class Options:
  """What `fm eval` was asked for; None means the run's `eval` section or the kind's default."""
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
  bpd_num: int = 10_000
  bpd_batch_size: int = 64
  divergence: str | None = None
  num_probes: int = 1
  progress: bool = True


def check(kind: str, opts: Options, sweep_spec: str | None = None) -> tuple[str, ...]:
  """The metrics to compute; ValueError (one sentence) for any bad option. Touches nothing."""
  valid = SWEEPABLE[kind] if sweep_spec else METRICS[kind]
  metrics = opts.metrics or (_DEFAULT_SWEEP[kind] if sweep_spec else METRICS[kind])
  for m in metrics:
    if m not in valid:
      what = "an NFE sweep of a" if sweep_spec else "a"
      raise ValueError(f"metric {m!r} is not available for {what} {'toy' if kind == 'points' else 'image'} "
                       f"run; choose from: {', '.join(valid)}")
  if len(set(metrics)) != len(metrics):
    raise ValueError(f"--metrics repeats a metric: {','.join(metrics)}")
  if sweep_spec:
    nfe_sweep.parse(sweep_spec)
  else:
    if opts.solver not in solvers.SOLVERS:
      raise ValueError(f"--solver: invalid choice {opts.solver!r}; valid solvers: {', '.join(solvers.SOLVERS)}")
    if opts.solver in solvers.FIXED_STEP and opts.steps is None:
      raise ValueError(f"solver {opts.solver!r} is fixed-step: pass --steps N")
    if opts.solver in solvers.ADAPTIVE and opts.steps is not None:
      raise ValueError(f"solver {opts.solver!r} is adaptive: use --rtol/--atol, not --steps")
  for name in ("num", "steps", "batch_size", "fid_batch_size", "bpd_num", "bpd_batch_size", "num_probes"):
    v = getattr(opts, name)
    if v is not None and v <= 0:
      raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
  for name in ("rtol", "atol"):
    v = getattr(opts, name)
    if v is not None and not v > 0:
      raise ValueError(f"--{name} must be positive, got {v}")
  if opts.divergence is not None and opts.divergence not in likelihood.DIVERGENCES:
    raise ValueError(f"--divergence: invalid choice {opts.divergence!r}; valid: {', '.join(likelihood.DIVERGENCES)}")
  if "fid" in metrics and opts.num is not None and opts.num < 2:
    raise ValueError(f"FID needs at least 2 samples (a covariance), got --num {opts.num}")
  if opts.fid_stats is not None and "fid" in metrics:
    if not os.path.isfile(opts.fid_stats):
      raise ValueError(f"--fid-stats {opts.fid_stats!r} is not a file")
    reference.from_file(opts.fid_stats)   # ValueError unless it holds mu [D], sigma [D, D]
  if opts.inception is not None and "fid" in metrics and os.path.isdir(opts.inception):
    raise ValueError(f"--inception {opts.inception!r} is a directory; pass the weights file")
  return tuple(metrics)


class Evaluator:
  """A run's checkpoint and what its metrics share (Inception, reference statistics, held-out data)."""

  def __init__(self, workdir: str, opts: Options):
    self.workdir, self.opts = workdir, opts
    self.run, self.params, self.step = recipe.load(workdir, opts.step)
    info = recipe.read_source_info(workdir)
    self.kind = info["kind"]
    ec = self.run.config.eval
    self.seed = ec.seed if opts.seed is None else opts.seed
    self.rtol = float(ec.get("rtol", 1e-5) if opts.rtol is None else opts.rtol)
    self.atol = float(ec.get("atol", 1e-5) if opts.atol is None else opts.atol)
    if self.kind == "images":
      self.num = 50_000 if opts.num is None else opts.num
    else:
      self.num = ec.num_samples if opts.num is None else opts.num
    self.batch_size = opts.batch_size or ec.get("batch_size", 256)
    self.divergence = opts.divergence or _DEFAULT_DIVERGENCE[self.kind]
    self.base = {"step": self.step, "method": self.run.config.method, "data": info["description"],
                 "seed": self.seed}
    self.skipped: dict[str, str] = {}
    self._fid = self._held_out = None

  def ready(self, metric: str) -> bool:
    """Prepares what `metric` needs; False (reason in `skipped`) if it cannot run here."""
    why = None
    if metric == "fid" and self._fid is None:
      weights = pathlib.Path(self.opts.inception) if self.opts.inception else fid.default_weights_path()
      if not weights.is_file():
        why = image_metrics.missing_weights(weights)
      else:
        self._fid = self._prepare_fid(weights)
    elif metric == "bpd" and self._held_out is None:
      kwargs = reference.load_kwargs(self.run.config.data.to_dict())
      images, where = image_metrics.held_out(kwargs, self.opts.bpd_num, self.seed)
      if images is None:
        why = where
      else:
        self._held_out = (images, where)
    elif metric == "nll":
      why = toy.nll_unavailable(self.run.config.data.task)
    if why:
      self.skipped[metric] = why
    return why is None

  def _prepare_fid(self, weights: pathlib.Path) -> dict[str, Any]:
    sha = records.file_sha256(weights)
    params = fid.load_inception(weights)
    if self.opts.fid_stats:
      mu, sigma, info = reference.from_file(self.opts.fid_stats)
    else:
      kwargs = reference.load_kwargs(self.run.config.data.to_dict())
      mu, sigma, info = reference.from_source(kwargs, params, sha, self.opts.fid_batch_size)
    return {"params": params, "mu": mu, "sigma": sigma,
            "info": {"inception": str(weights), "inception_sha256": sha, **info}}

  def compute(self, metric: str, solver: str, rtol: float | None = None, atol: float | None = None,
              steps: int | None = None) -> dict[str, Any]:
    """One metric at one solver setting, as the record `eval.jsonl` gets (call `ready` first)."""
    rtol = self.rtol if rtol is None else rtol
    atol = self.atol if atol is None else atol
    fields = records.solver_fields(solver, rtol, atol, steps)
    ode = dict(solver=solver, rtol=rtol, atol=atol, steps=steps)
    start = time.time()
    if metric == "fid":
      sample_x0 = recipe.x0_sampler(self.run.config, self.run.shape)
      extra = self._fid["info"]
      result = image_metrics.fid_of_run(
          self.run, self.params, sample_x0, self._fid["params"], self._fid["mu"], self._fid["sigma"],
          num=self.num, seed=self.seed, batch_size=self.batch_size, fid_batch_size=self.opts.fid_batch_size,
          progress=self.opts.progress, **ode)
    elif metric == "bpd":
      images, where = self._held_out
      extra = {"held_out": where}
      result = image_metrics.bpd_of_run(self.run, self.params, images, seed=self.seed, divergence=self.divergence,
                                        num_probes=self.opts.num_probes, batch_size=self.opts.bpd_batch_size, **ode)
    else:
      task, ec = self.run.config.data.task, self.run.config.eval
      args = (self.run.model, self.params, task, self.num, self.seed)
      extra = {"task": task}
      if metric == "w2":
        result = toy.w2_at(*args, **ode)
      elif metric == "path_energy":
        result = toy.path_energy_at(*args, euler_steps=ec.euler_steps)
        fields = records.solver_fields("euler", None, None, ec.euler_steps)
      else:
        result = toy.nll(*args, divergence=self.divergence, num_probes=self.opts.num_probes, **ode)
    return {"metric": metric, "value": result.pop("value"), **self.base, **fields, **result, **extra,
            "elapsed_s": round(time.time() - start, 3), **records.stamp()}


def evaluate(workdir: str, opts: Options) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """Computes the chosen metrics and appends each to `eval.jsonl`; returns `(records, skipped)`."""
  metrics = check(recipe.read_source_info(workdir)["kind"], opts)
  ev = Evaluator(workdir, opts)
  out = []
  for m in metrics:
    if ev.ready(m):
      rec = ev.compute(m, opts.solver, steps=opts.steps)
      records.append(workdir, rec)
      out.append(rec)
  return out, ev.skipped


def sweep(workdir: str, spec: str, opts: Options) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
  """Metrics at each point of `spec` ("euler:1,2,5"); appends every record to `eval.jsonl` and writes
  `nfe_sweep_<solver>.{md,csv,png}`. Returns `(rows, paths, skipped)`; no paths if nothing could run.
  """
  kind = recipe.read_source_info(workdir)["kind"]
  metrics = check(kind, opts, spec)
  solver, values = nfe_sweep.parse(spec)
  ev = Evaluator(workdir, opts)
  active = [m for m in metrics if ev.ready(m)]
  if not active:
    return [], {}, ev.skipped
  adaptive = solver in solvers.ADAPTIVE
  rows = []
  for value in values:
    row = {"solver": solver, ("tol" if adaptive else "steps"): value}
    for m in active:
      rec = ev.compute(m, solver, *((value, value, None) if adaptive else (None, None, value)))
      rec["sweep"] = spec
      records.append(workdir, rec)
      row.setdefault("nfe", rec["nfe"])
      if rec["nfe"] != row["nfe"]:
        row[f"{m}_nfe"] = rec["nfe"]
      row[m] = rec["value"]
    rows.append(row)
  what = f"{ev.num} samples" if kind == "points" or "fid" in active else ""
  if "bpd" in active:
    what += (", " if what else "") + f"bits/dim of {len(ev._held_out[0])} held-out images ({ev.divergence})"
  caption = (f"{ev.base['method']} at step {ev.step}, {solver} NFE sweep. Data: {ev.base['data']}; "
             f"seed {ev.seed}; {what}; NFE per trajectory (mean over batches).")
  paths = nfe_sweep.write(workdir, solver, rows, active, caption)
  return rows, paths, ev.skipped
