"""The metric registry: every metric `fm eval`, the end-of-training evaluation and `fm sweep` can compute.

    registry.names("points")                # ("w2", "path_energy", "nll")
    registry.check("images", ("fid",), opts) # ValueError (one sentence) for a bad choice or option
    metric = registry.make("fid")

Adding a metric is one module under `fm/evaluate/metrics/` (a `Metric` subclass)
and one line in `METRICS` below. The order of `METRICS` is the order in which
metrics are computed and listed.
"""
from __future__ import annotations

from fm import config as config_lib
from fm import errors
from fm.evaluate.metric import Metric, Options
from fm.evaluate.metrics import bpd, fid, grid, nll, path_energy, w2

__all__ = ["METRICS", "KINDS", "names", "defaults", "make", "check", "parse", "at_end", "check_config"]

METRICS: dict[str, type[Metric]] = {m.name: m for m in (
    w2.W2,
    path_energy.PathEnergy,
    nll.NLL,
    fid.FID,
    bpd.BPD,
    grid.Grid,
)}
KINDS = ("points", "images")
_KIND_WORDS = {"points": "toy", "images": "image"}


def names(kind: str, sweep: bool = False) -> tuple[str, ...]:
  """The metrics a run of `kind` can compute (with `sweep`: those an NFE sweep can)."""
  return tuple(n for n, m in METRICS.items() if kind in m.kinds and (m.sweepable or not sweep))


def defaults(kind: str, sweep: bool = False) -> tuple[str, ...]:
  """What `fm eval` computes without `--metrics` (an NFE sweep: the first sweepable metric)."""
  if sweep:
    return names(kind, sweep=True)[:1]
  return tuple(n for n in names(kind) if METRICS[n].default)


def make(name: str) -> Metric:
  return METRICS[name]()


def parse(text: str | None) -> tuple[str, ...] | None:
  """"w2, nll" -> ("w2", "nll"); None or "" -> None."""
  if not text:
    return None
  return tuple(m.strip() for m in str(text).split(",") if m.strip()) or None


def check(kind: str, metrics: tuple[str, ...] | None, opts: Options | None = None, sweep: bool = False,
          what: str = "--metrics") -> tuple[str, ...]:
  """The metrics to compute (the kind's defaults for None); ValueError (one sentence) for a bad one."""
  valid = names(kind, sweep)
  metrics = metrics or defaults(kind, sweep)
  for m in metrics:
    if m not in valid:
      run = f"an NFE sweep of a {_KIND_WORDS[kind]}" if sweep else f"a {_KIND_WORDS[kind]}"
      raise ValueError(f"{what}: metric {m!r} is not available for {run} run; choose from: {', '.join(valid)}")
  if len(set(metrics)) != len(metrics):
    raise ValueError(f"{what} repeats a metric: {','.join(metrics)}")
  if opts is not None:
    for m in metrics:
      make(m).check(opts)
  return tuple(metrics)


def at_end(kind: str, eval_metrics: str | None) -> tuple[str, ...]:
  """The end-of-training metrics: `config.eval.metrics` ("w2,path_energy"), else the kind's default."""
  return check(kind, parse(eval_metrics) or parse(config_lib.AT_END_METRICS[kind]), what="eval.metrics")


def check_config(config) -> None:
  """`fm.errors.UserError` (one sentence) unless `config.eval.metrics` names metrics of the run's kind."""
  from fm import data as data_lib  # pylint: disable=g-import-not-at-top
  name = config.data.get("name", "toy") if "data" in config else "toy"
  if name in data_lib.KINDS and "eval" in config:
    try:
      at_end(data_lib.KINDS[name], config.eval.get("metrics"))
    except ValueError as e:
      raise errors.UserError(str(e)) from None
