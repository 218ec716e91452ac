"""`kid`: kernel Inception distance of generated images (`fm.evaluate.kid`), sharing FID's samples and features."""
from __future__ import annotations

from typing import Any

from fm.evaluate import image_metrics
from fm.evaluate.metric import Context, Metric, Options, sde_kwargs
from fm.evaluate.metrics import fid as fid_metric

__all__ = ["KID"]


class KID(Metric):
  """KID (100 subsets of min(1000, N)) of the generated images' features against the training source's features.

  Uses the same samples and features as `fid` at one solver setting (and its
  `--fid-preprocessing`); not available with `--fid-stats`, which holds no features.
  """
  name = "kid"
  kinds = ("images",)
  sweep_default = True
  needs = ("generated images, the Inception weights (as fid) and the training data's features "
           "(computed and cached; not available with --fid-stats)")

  def check(self, opts: Options) -> None:
    fid_metric.check_inception_options(opts, "KID")

  def default_num(self, ctx: Context) -> int:
    return fid_metric.default_num(ctx)

  def prepare(self, ctx: Context) -> str | None:
    net = fid_metric.inception(ctx)
    if "missing" in net:
      return net["missing"]
    if ctx.opts.fid_stats:
      return (f"KID skipped: it needs the reference images' features, and --fid-stats {ctx.opts.fid_stats} holds "
              f"only mu and sigma (leave out --fid-stats to use the run's training data).")
    self.ref = fid_metric.reference_of(ctx)
    return None

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    sde = sde_kwargs(ctx, solver, "gaussian")   # image runs start from N(0, I)
    feats, info = fid_metric.features(ctx, ctx.num(self), solver, rtol, atol, steps, **sde)
    out = image_metrics.kid_of_features(feats, self.ref["feats"], ctx.seed)
    return {**out, **info, **self.ref["info"], **({"sde_noise": sde["noise"]} if sde else {})}
