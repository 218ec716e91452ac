"""One evaluation driver: `fm eval`, NFE sweeps and the end-of-training evaluation, over the metric registry.

    records, skipped = runner.evaluate(workdir, Options(metrics=("fid", "bpd"), num=50000))
    rows, paths, skipped = runner.sweep(workdir, "euler:1,2,5,10,20,50,100", Options())
    result = runner.evaluate_at_end(workdir)       # config.eval.metrics at the run's eval settings

The metrics and what each needs are in `fm.evaluate.registry` (one class per
metric under `fm/evaluate/metrics/`). Unset options fall back to the run's `eval`
section (seed, rtol, atol, batch size) and the metric's default sample count.
A metric that cannot be computed here (no Inception weights, no held-out images,
no closed-form source density) is skipped with one sentence, and the others run.
FID and KID of one solver setting share one set of samples and Inception features
(`fm.evaluate.metrics.fid`), and both record their preprocessing
(`fid_preprocessing`: "tf" or "pytorch-fid").

Every computed metric is one line of `WORKDIR/eval.jsonl` (`records`): the metric,
its value, NFE, checkpoint step, data, seed, solver and tolerances or steps,
sample count, time, fm's commit and the device; only process 0 appends. The
end-of-training evaluation also writes `eval.json`: a flat view of the records it
just appended (the keys of earlier fm versions: w2, nfe, path_energy, ...), with
the eval settings, provenance, and the records themselves under `records`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from fm import likelihood, provenance, solvers
from fm.evaluate import conditional, nfe_sweep, records, registry
from fm.evaluate.metric import SAMPLE_METRICS, Context, Options, check_sampler, sde_noise
from fm.io import files
from fm import recipe

__all__ = ["Options", "EVAL_JSON", "check", "evaluate", "sweep", "guidance_sweep", "evaluate_at_end", "up_to_date",
           "read_view"]

EVAL_JSON = "eval.json"
_INCEPTION = ("fid", "kid")   # metrics of the Inception features (one set of samples per solver setting)
log = logging.getLogger("fm")


def check(kind: str, opts: Options, sweep_spec: str | None = None) -> tuple[str, ...]:
  """The metrics to compute; ValueError (one sentence) for any bad option. Touches nothing."""
  metrics = registry.check(kind, opts.metrics, opts, sweep=bool(sweep_spec))
  if sweep_spec:
    solver, _ = nfe_sweep.parse(sweep_spec)
  else:
    solver = opts.solver
    solvers.check_sampler(opts.solver, opts.steps)
  ode_only = [m for m in metrics if m not in SAMPLE_METRICS]
  if solver not in solvers.SOLVERS and ode_only:
    raise ValueError(f"metric {ode_only[0]!r} needs an ODE solver ({', '.join(solvers.SOLVERS)}), not "
                     f"{solver!r}; sample-based metrics: {', '.join(SAMPLE_METRICS)}")
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
  return metrics


def _ready(ctx: Context, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
  """`({name: prepared metric}, {name: why skipped})`."""
  ready, skipped = {}, {}
  for name in names:
    metric = registry.make(name)
    why = metric.prepare(ctx)
    if why:
      skipped[name] = why
    else:
      ready[name] = metric
  return ready, skipped


def _compute(ctx: Context, metric, solver: str, rtol: float | None = None, atol: float | None = None,
             steps: int | None = None, **extra) -> dict[str, Any]:
  """One metric at one solver setting as the record `eval.jsonl` gets; appended there (process 0)."""
  rtol = ctx.rtol if rtol is None else rtol
  atol = ctx.atol if atol is None else atol
  start = time.time()
  result = metric.compute(ctx, solver, rtol, atol, steps)
  used = {k: result.pop(k) for k in ("solver", "rtol", "atol", "steps") if k in result}
  fields = records.solver_fields(used.get("solver", solver), used.get("rtol", rtol), used.get("atol", atol),
                                 used.get("steps", steps))
  record = {"metric": metric.name, "value": result.pop("value"), **ctx.base, **fields, **result, **extra,
            "elapsed_s": round(time.time() - start, 3), **records.stamp()}
  records.append(ctx.workdir, record)
  return record


def evaluate(workdir: str, opts: Options) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """Computes the chosen metrics and appends each to `eval.jsonl`; returns `(records, skipped)`."""
  names = check(recipe.read_source_info(workdir)["kind"], opts)
  ctx = Context(workdir, opts)
  ready, skipped = _ready(ctx, names)
  return [_compute(ctx, m, opts.solver, steps=opts.steps) for m in ready.values()], skipped


def sweep(workdir: str, spec: str, opts: Options) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
  """Metrics at each point of `spec` ("euler:1,2,5"); appends every record to `eval.jsonl` and writes
  `nfe_sweep_<solver>.{md,csv,png}`. Returns `(rows, paths, skipped)`; no paths if nothing could run.
  """
  kind = recipe.read_source_info(workdir)["kind"]
  names = check(kind, opts, spec)
  solver, values = nfe_sweep.parse(spec)
  ctx = Context(workdir, opts)
  check_sampler(ctx, solver)   # meanflow / an SDE on a run they cannot sample: refused before any work
  active, skipped = _ready(ctx, names)
  if not active:
    return [], {}, skipped
  adaptive = solver in solvers.ADAPTIVE
  noise = sde_noise(opts, solver)
  rows = []
  for value in values:
    row = {"solver": solver, ("tol" if adaptive else "steps"): value, **({} if noise is None else {"sde_noise": noise})}
    for name, metric in active.items():
      rec = _compute(ctx, metric, solver, *((value, value, None) if adaptive else (None, None, value)), sweep=spec)
      row.setdefault("nfe", rec["nfe"])
      if rec["nfe"] != row["nfe"]:
        row[f"{name}_nfe"] = rec["nfe"]
      if "network_passes" in rec:   # a conditional run at guidance s: 2 NFE unless s is 0 or 1
        row.setdefault("network_passes", rec["network_passes"])
      row[name] = rec["value"]
    rows.append(row)
  what = []
  inception = [m for m in active.values() if m.name in _INCEPTION]
  if kind == "points" or inception:
    metric = inception[0] if inception else next(iter(active.values()))
    what.append(f"{ctx.num(metric)} samples" + (f" ({ctx.opts.fid_preprocessing} preprocessing)" if inception else ""))
  if "bpd" in active:
    what.append(f"bits/dim of {len(active['bpd'].images)} held-out images ({ctx.divergence})")
  sampler = solver if noise is None else f"{solver} (SDE noise {noise:g})"
  caption = (f"{ctx.base['method']} at step {ctx.step}, {sampler} NFE sweep. Data: {ctx.base['data']}; "
             f"seed {ctx.seed}; {', '.join(what)}; NFE per trajectory (mean over batches).")
  paths = nfe_sweep.write(workdir, solver, list(rows), list(active), caption)
  return rows, paths, skipped


def evaluate_at_end(workdir: str, loaded: tuple | None = None, progress: bool = False) -> dict[str, Any]:
  """The end-of-training evaluation: `config.eval.metrics` at the run's eval settings; writes `eval.json`.

  Each record is appended to `eval.jsonl` as by `fm eval`; `eval.json` is the
  flat view of them (`summary` of each metric), with `eval_settings`,
  `provenance`, `skipped` (metric: why) and `warnings` for a solve that stopped
  at its step limit. `loaded`: `(run, ema_params, step)` if already in memory.
  """
  ctx = Context(workdir, Options(progress=progress), loaded)
  names = registry.at_end(ctx.kind, ctx.eval_config.get("metrics"))
  ready, skipped = _ready(ctx, names)
  for why in skipped.values():
    log.info("%s", why)
  result: dict[str, Any] = dict(ctx.base)
  result.update(solver="dopri5", rtol=ctx.rtol, atol=ctx.atol, num_samples=ctx.eval_config.num_samples)
  if ctx.kind == "points":
    result.update(task=ctx.run.config.data.task, euler_steps=ctx.eval_config.euler_steps)
  recs = {}
  for name, metric in ready.items():
    recs[name] = _compute(ctx, metric, "dopri5", origin="end of training")
    result.update(metric.summary(recs[name]))
  warnings = [f"{r['solver']} stopped at its step limit before t = 1 (rtol {r.get('rtol')}, atol {r.get('atol')}): "
              f"the {name} numbers are of samples that were not integrated to t = 1"
              for name, r in recs.items() if r.get("success") is False]
  result["eval_settings"] = ctx.eval_config.to_dict()
  result["provenance"] = provenance.record()
  if skipped:
    result["skipped"] = skipped
  if warnings:
    result["warnings"] = warnings
  result["records"] = recs
  files.write_json(os.path.join(workdir, EVAL_JSON), result)   # process 0
  return result


def read_view(workdir: str) -> dict[str, Any] | None:
  """`eval.json` (any fm version's), or None if there is none or it cannot be read."""
  path = os.path.join(workdir, EVAL_JSON)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  return result if isinstance(result, dict) else None


def up_to_date(workdir: str, step: int) -> dict[str, Any] | None:
  """eval.json's content if it is of checkpoint `step` with the run's current eval settings, else None."""
  result = read_view(workdir)
  if result is None or result.get("step") != step:
    return None
  if result.get("eval_settings") != recipe.read_config(workdir).eval.to_dict():
    return None
  return result


_GUIDANCE_DEFAULT = {"images": ("fid",), "points": ("w2",)}


def guidance_sweep(workdir: str, scales, opts: Options) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
  """A conditional run's metrics at each guidance scale in `scales`; appends every record to `eval.jsonl` and
  writes `guidance_sweep.{md,csv,png}`. Returns `(rows, paths, skipped)`.

  Default metrics: fid (images, labels from the training distribution) and w2
  (toys, with per-class W2 and mode accuracy). Image runs also get a per-class
  grid at each scale (`samples/guidance_<s>.png`, 8 per class, the sweep's
  solver), so a sweep without Inception weights still has its NFE, network
  passes and pictures. ValueError (one sentence) for an unconditional run.
  """
  kind = recipe.read_source_info(workdir)["kind"]
  names = check(kind, dataclasses.replace(opts, metrics=opts.metrics or _GUIDANCE_DEFAULT[kind]))
  ctx = Context(workdir, opts)
  if not ctx.num_classes:
    raise ValueError(f"--guidance-sweep is for class-conditional runs, and {workdir} is unconditional "
                     f"(model.num_classes = 0)")
  active, skipped = _ready(ctx, names)
  rows = []
  for s in scales:
    ctx.set_guidance(s)
    row = {"guidance": float(s)}
    for name, metric in active.items():
      rec = _compute(ctx, metric, opts.solver, steps=opts.steps, sweep="guidance")
      row[name] = rec["value"]
      for key in ("mode_accuracy", "w2_class_mean"):
        if key in rec:
          row[key] = rec[key]
      row.setdefault("nfe", rec["nfe"])
      row.setdefault("network_passes", rec.get("network_passes"))
    if kind == "images":
      row.update(_guidance_grid(ctx, opts))
    rows.append(row)
  columns = [c for c in rows[0] if c != "guidance"]
  caption = (f"{ctx.base['method']} at step {ctx.step}, guidance sweep ({opts.solver}). Data: {ctx.base['data']}; "
             f"seed {ctx.seed}" + ("; FID labels from the training distribution" if "fid" in active else "") +
             "; NFE per trajectory (mean over batches); network passes = NFE, or 2 NFE for guidance not 0 or 1.")
  paths = conditional.write_guidance_sweep(workdir, rows, columns, caption)
  return rows, paths, skipped


def _guidance_grid(ctx: Context, opts: Options) -> dict[str, Any]:
  """A per-class grid (8 images of every class) at the context's guidance: its path, NFE and network passes."""
  from fm.evaluate import images  # pylint: disable=g-import-not-at-top
  per = 8
  out = os.path.join(ctx.workdir, "samples", f"guidance_{ctx.guidance:g}.npz")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  info = images.sample_run(ctx.run, ctx.params, ctx.step, out, opts.solver, num=per * ctx.num_classes,
                           seed=ctx.seed, rtol=ctx.rtol, atol=ctx.atol, steps=opts.steps,
                           batch_size=min(ctx.batch_size, per * ctx.num_classes), progress=False,
                           classes=list(range(ctx.num_classes)), guidance=ctx.guidance, source_info=ctx.source_info,
                           sde_noise=sde_noise(opts, opts.solver))   # now that SDE samplers take guidance
  n = len(info["nfe_per_batch"])
  return {"grid": os.path.relpath(info["png"], ctx.workdir), "grid_nfe": info["nfe"] / n,
          "grid_network_passes": info["network_passes"] / n}
