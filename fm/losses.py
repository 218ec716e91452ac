"""Training objectives on coupled pairs, one registry: `make(name, path, time_sampler, **options)`.

======== ============================================ ============================= ==================
name     objective                                     options                       network head
======== ============================================ ============================= ==================
cfm      mean((v_theta(t, x_t) - u_t)^2) (TorchCFM)   (none)                        velocity
sf2m     flow + lambda-weighted score (`fm.sf2m`)      (none; path must be "sb")     flow_score
meanflow average-velocity target by jax.jvp            m, s, equal_fraction, p, c    average_velocity
         (`fm.meanflow`)
======== ============================================ ============================= ==================

`make` returns None for "cfm": `fm.methods.Method.loss` computes it itself. The
head (`fm.heads`) says which model options the objective needs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fm import meanflow, paths, sf2m

__all__ = ["make", "check_time", "NAMES", "HEADS", "OPTIONS", "OWN_TIMES"]

HEADS = {"cfm": "velocity", "sf2m": "flow_score", "meanflow": "average_velocity"}
NAMES = tuple(HEADS)
OPTIONS = {"cfm": (), "sf2m": (), "meanflow": ("m", "s", "equal_fraction", "p", "c")}
# Losses that draw their own times, so the `time` section never reaches them: the loss options that set them.
OWN_TIMES = {"meanflow": ("m", "s", "equal_fraction")}


def check_time(loss: str, time_name: str | None, time_options: dict[str, Any]) -> None:
  """ValueError (one sentence) if `loss` draws its own times and the time sampler is set at all.

  Only the default (name "uniform" or None, no options; None-valued options count as
  unset) passes: any other value would be silently ignored. The message begins with
  the offending key, `time.<key>=<value>`.
  """
  if loss not in OWN_TIMES:
    return
  options = {k: v for k, v in time_options.items() if v is not None}
  if time_name in (None, "uniform") and not options:
    return
  key, value = ("name", time_name) if time_name not in (None, "uniform") else sorted(options.items())[0]
  own = ", ".join(f"loss.{o}" for o in OWN_TIMES[loss])
  raise ValueError(f"time.{key}={value!r} has no effect on loss {loss!r}, which draws its own (t, r) times "
                   f"(set them with {own}); leave the time section at its default (uniform, no options)")


def make(name: str, path: paths.Path, time_sampler: Callable, **options: Any) -> Callable | None:
  """The objective `f(apply_fn, params, key, x0, x1) -> (loss, aux)`, or None for "cfm".

  ValueError (one sentence) names a bad name or option.
  """
  if name not in HEADS:
    raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(NAMES)}")
  bad = sorted(set(options) - set(OPTIONS[name]))
  if bad:
    valid = ", ".join(OPTIONS[name]) or "none"
    raise ValueError(f"loss {name!r} got unknown option(s) {bad}; valid: {valid}")
  if name == "cfm":
    return None
  if name == "sf2m":
    return sf2m.SF2MLoss(path, time_sampler)
  time_fields = {f.name for f in dataclasses.fields(meanflow.TimePairSampler)}
  times = meanflow.TimePairSampler(**{k: float(v) for k, v in options.items() if k in time_fields})
  return meanflow.MeanFlowLoss(path, times, **{k: float(v) for k, v in options.items() if k not in time_fields})
