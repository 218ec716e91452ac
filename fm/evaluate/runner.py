"""One evaluation driver: `fm eval`, NFE sweeps and the end-of-training evaluation, over the metric registry.

    records, skipped = runner.evaluate(workdir, Options(metrics=("fid", "bpd"), num=50000))
    rows, paths, skipped = runner.sweep(workdir, "euler:1,2,5,10,20,50,100", Options())
    result = runner.evaluate_at_end(workdir)       # config.eval.metrics at the run's eval settings

The metrics and what each needs are in `fm.evaluate.registry` (one class per
metric under `fm/evaluate/metrics/`). Unset options fall back to the run's `eval`
section (seed, rtol, atol, batch size) and the metric's default sample count.
A metric that cannot be computed here (no Inception weights, no held-out images,
no closed-form source density) is skipped with one sentence, and the others run.

Every computed metric is one line of `WORKDIR/eval.jsonl` (`records`): the metric,
its value, NFE, checkpoint step, data, seed, solver and tolerances or steps,
sample count, time, fm's commit and the device; only process 0 appends. The
end-of-training evaluation also writes `eval.json`: a flat view of the records it
just appended (the keys of earlier fm versions: w2, nfe, path_energy, ...), with
the eval settings, provenance, and the records themselves under `records`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from fm import likelihood, provenance, solvers
from fm.evaluate import nfe_sweep, records, registry
from fm.evaluate.metric import Context, Options
from fm.io import files
from fm import recipe

__all__ = ["Options", "EVAL_JSON", "check", "evaluate", "sweep", "evaluate_at_end", "up_to_date", "read_view"]

EVAL_JSON = "eval.json"
log = logging.getLogger("fm")


def check(kind: str, opts: Options, sweep_spec: str | None = None) -> tuple[str, ...]:
  """The metrics to compute; ValueError (one sentence) for any bad option. Touches nothing."""
  metrics = registry.check(kind, opts.metrics, opts, sweep=bool(sweep_spec))
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
  active, skipped = _ready(ctx, names)
  if not active:
    return [], {}, skipped
  adaptive = solver in solvers.ADAPTIVE
  rows = []
  for value in values:
    row = {"solver": solver, ("tol" if adaptive else "steps"): value}
    for name, metric in active.items():
      rec = _compute(ctx, metric, solver, *((value, value, None) if adaptive else (None, None, value)), sweep=spec)
      row.setdefault("nfe", rec["nfe"])
      if rec["nfe"] != row["nfe"]:
        row[f"{name}_nfe"] = rec["nfe"]
      row[name] = rec["value"]
    rows.append(row)
  what = []
  if kind == "points" or "fid" in active:
    what.append(f"{ctx.num(next(iter(active.values())))} samples")
  if "bpd" in active:
    what.append(f"bits/dim of {len(active['bpd'].images)} held-out images ({ctx.divergence})")
  caption = (f"{ctx.base['method']} at step {ctx.step}, {solver} NFE sweep. Data: {ctx.base['data']}; "
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
