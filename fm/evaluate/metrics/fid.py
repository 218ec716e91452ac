"""`fid`: Fréchet Inception distance of generated images (a thin wrapper of `fm.evaluate.fid` and friends)."""
from __future__ import annotations

import os
import pathlib
from typing import Any

from fm import recipe
from fm.evaluate import fid, image_metrics, records, reference
from fm.evaluate.metric import Context, Metric, Options

__all__ = ["FID"]


def inception(ctx: Context) -> dict[str, Any]:
  """`{"params", "path", "sha256"}` of the Inception weights (loaded once per evaluation), or `{"missing"}`."""
  def make():
    weights = pathlib.Path(ctx.opts.inception) if ctx.opts.inception else fid.default_weights_path()
    if not weights.is_file():
      return {"missing": image_metrics.missing_weights(weights)}
    return {"params": fid.load_inception(weights), "path": str(weights), "sha256": records.file_sha256(weights)}
  return ctx.shared("inception", make)


class FID(Metric):
  """FID of `num` generated images (default `eval.fid_num`, else 50 000) against reference statistics `(mu, sigma)`.

  The reference is `--fid-stats` (an .npz with mu, sigma) or computed from the
  run's training source once and cached (`fm.evaluate.reference`).
  """
  name = "fid"
  kinds = ("images",)
  needs = ("generated images, the Inception weights (fm.evaluate.fid.default_weights_path() or --inception) "
           "and reference statistics (--fid-stats, or computed from the training data and cached)")

  def check(self, opts: Options) -> None:
    if opts.num is not None and opts.num < 2:
      raise ValueError(f"FID needs at least 2 samples (a covariance), got --num {opts.num}")
    if opts.fid_stats is not None:
      if not os.path.isfile(opts.fid_stats):
        raise ValueError(f"--fid-stats {opts.fid_stats!r} is not a file")
      reference.from_file(opts.fid_stats)   # ValueError unless it holds mu [D], sigma [D, D]
    if opts.inception is not None and os.path.isdir(opts.inception):
      raise ValueError(f"--inception {opts.inception!r} is a directory; pass the weights file")

  def default_num(self, ctx: Context) -> int:
    return ctx.eval_config.get("fid_num", 50_000)

  def prepare(self, ctx: Context) -> str | None:
    net = inception(ctx)
    if "missing" in net:
      return net["missing"]
    if ctx.opts.fid_stats:
      self.mu, self.sigma, info = reference.from_file(ctx.opts.fid_stats)
    else:
      kwargs = reference.load_kwargs(ctx.run.config.data.to_dict())
      self.mu, self.sigma, info = reference.from_source(kwargs, net["params"], net["sha256"],
                                                        ctx.opts.fid_batch_size)
    self.info = {"inception": net["path"], "inception_sha256": net["sha256"], **info}
    return None

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    sample_x0 = recipe.x0_sampler(ctx.run.config, ctx.run.shape)
    out = image_metrics.fid_of_run(
        ctx.run, ctx.params, sample_x0, inception(ctx)["params"], self.mu, self.sigma, num=ctx.num(self),
        seed=ctx.seed, batch_size=ctx.batch_size, fid_batch_size=ctx.opts.fid_batch_size,
        progress=ctx.opts.progress, solver=solver, rtol=rtol, atol=atol, steps=steps)
    return {**out, **self.info}
