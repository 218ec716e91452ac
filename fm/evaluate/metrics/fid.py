"""`fid`: Fréchet Inception distance of generated images (a thin wrapper of `fm.evaluate.fid` and friends).

What FID and KID (`fm.evaluate.metrics.kid`) share lives here, memoised on the
`Context`: the Inception network, the reference (statistics and, computed from
the training data, its features) and the generated images' features at one
solver setting, so that FID and KID of one setting use one set of samples.
"""
from __future__ import annotations

import functools
import os
import pathlib
import time
from typing import Any

from fm import recipe
from fm.evaluate import conditional, fid, image_metrics, records, reference
from fm.evaluate.metric import Context, Metric, Options, sde_kwargs

__all__ = ["FID", "check_inception_options", "inception", "reference_of", "features", "default_num"]


@functools.lru_cache(maxsize=2)
def _check_weights(path: str, mtime: float) -> None:
  del mtime
  fid.load_inception(path)   # ValueError (one sentence) unless it holds the FID Inception


def check_inception_options(opts: Options, what: str) -> None:
  """ValueError (one sentence) for a bad --num, --fid-preprocessing, --fid-ref-num or --inception of FID / KID."""
  if opts.num is not None and opts.num < 2:
    raise ValueError(f"{what} needs at least 2 samples, got --num {opts.num}")
  if opts.fid_ref_num is not None and opts.fid_ref_num < 2:
    raise ValueError(f"--fid-ref-num must be at least 2 images, got {opts.fid_ref_num}")
  if opts.fid_ref_num is not None and opts.fid_stats is not None:
    raise ValueError("--fid-ref-num subsets the training data, which --fid-stats replaces; give one of them")
  if opts.fid_preprocessing not in fid.PREPROCESSING:
    raise ValueError(f"--fid-preprocessing: invalid choice {opts.fid_preprocessing!r}; valid: "
                     f"{', '.join(fid.PREPROCESSING)}")
  if opts.inception is not None:
    if os.path.isdir(opts.inception):
      raise ValueError(f"--inception {opts.inception!r} is a directory; pass the weights file")
    if not os.path.exists(opts.inception):
      raise ValueError(f"--inception {opts.inception!r} does not exist; {fid.missing_weights(opts.inception)}")
    _check_weights(os.path.abspath(opts.inception), os.path.getmtime(opts.inception))


def inception(ctx: Context) -> dict[str, Any]:
  """`{"params", "path", "sha256"}` of the Inception weights (loaded once per evaluation), or `{"missing"}`."""
  def make():
    weights = pathlib.Path(ctx.opts.inception) if ctx.opts.inception else fid.default_weights_path()
    if not weights.is_file():
      return {"missing": image_metrics.missing_weights(weights)}
    return {"params": fid.load_inception(weights), "path": str(weights), "sha256": records.file_sha256(weights)}
  return ctx.shared("inception", make)


def reference_of(ctx: Context) -> dict[str, Any]:
  """`{"mu", "sigma", "feats", "info"}` of the reference (once per evaluation); `feats` is None for --fid-stats."""
  def make():
    net = inception(ctx)
    mode = ctx.opts.fid_preprocessing
    if ctx.opts.fid_stats:
      mu, sigma, info = reference.from_file(ctx.opts.fid_stats)
      feats = None
    else:
      kwargs = reference.load_kwargs(ctx.run.config.data.to_dict())
      mu, sigma, feats, info = reference.from_source(kwargs, net["params"], net["sha256"], ctx.opts.fid_batch_size,
                                                     preprocessing=mode, num=ctx.opts.fid_ref_num)
    return {"mu": mu, "sigma": sigma, "feats": feats,
            "info": {"inception": net["path"], "inception_sha256": net["sha256"], **info}}
  return ctx.shared("fid_reference", make)


def default_num(ctx: Context) -> int:
  """FID's and KID's sample count without --num: `eval.fid_num`, else 50 000."""
  return ctx.eval_config.get("fid_num", 50_000)


def features(ctx: Context, num: int, solver: str, rtol: float, atol: float,
             steps: int | None, noise: float = 0.0, path=None) -> tuple[Any, dict[str, Any]]:
  """Inception features of `num` generated images at one solver setting, computed once for FID and KID.

  `noise`, `path`: an SDE solver's diffusion scale and the run's path (`metric.sde_kwargs`).
  """
  cache = ctx.shared("fid_features", dict)
  key = (num, solver, rtol, atol, steps, noise, ctx.guidance)
  if key not in cache:
    sample_x0 = recipe.x0_sampler(ctx.run.config, ctx.run.shape)
    start = time.time()
    cond = {}
    if ctx.num_classes:   # a conditional run: labels from the training label distribution, as the reference's
      cond = {"labels": conditional.training_labels(conditional.label_key(ctx.seed), num, ctx.class_probs),
              "guidance": ctx.guidance}
    feats, info = image_metrics.features_of_run(
        ctx.run, ctx.params, sample_x0, inception(ctx)["params"], num=num, seed=ctx.seed,
        batch_size=ctx.batch_size, fid_batch_size=ctx.opts.fid_batch_size,
        preprocessing=ctx.opts.fid_preprocessing, progress=ctx.opts.progress,
        solver=solver, rtol=rtol, atol=atol, steps=steps, noise=noise, path=path, **cond)
    if cond:
      info["labels"] = "training distribution"
    info["samples_elapsed_s"] = round(time.time() - start, 3)
    cache.clear()   # keep one setting: a sweep moves on
    cache[key] = (feats, info)
  feats, info = cache[key]
  return feats, dict(info)


class FID(Metric):
  """FID of `num` generated images (default `eval.fid_num`, else 50 000) against reference statistics `(mu, sigma)`.

  The reference is `--fid-stats` (an .npz with mu, sigma) or computed from the
  run's training source once and cached (`fm.evaluate.reference`), under the
  preprocessing `--fid-preprocessing` ("tf" or "pytorch-fid", recorded as
  `fid_preprocessing`). The record also holds the mean and std of FID over
  `--fid-subsets` disjoint subsets of the samples.
  """
  name = "fid"
  kinds = ("images",)
  sweep_default = True
  needs = ("generated images, the Inception weights (fm.evaluate.fid.default_weights_path() or --inception) "
           "and reference statistics (--fid-stats, or computed from the training data and cached)")

  def check(self, opts: Options) -> None:
    check_inception_options(opts, "FID")
    if opts.fid_subsets < 0 or opts.fid_subsets == 1:
      raise ValueError(f"--fid-subsets must be 0 (none) or at least 2, got {opts.fid_subsets}")
    if opts.fid_stats is not None:
      if not os.path.isfile(opts.fid_stats):
        raise ValueError(f"--fid-stats {opts.fid_stats!r} is not a file")
      _, _, info = reference.from_file(opts.fid_stats)   # ValueError unless it holds mu [D], sigma [D, D]
      mode = info.get("reference_preprocessing")
      if mode is not None and mode != opts.fid_preprocessing:
        raise ValueError(f"--fid-stats {opts.fid_stats!r} was computed with preprocessing {mode!r}, not "
                         f"{opts.fid_preprocessing!r}; pass --fid-preprocessing {mode} or statistics of the same mode")

  def default_num(self, ctx: Context) -> int:
    return default_num(ctx)

  def prepare(self, ctx: Context) -> str | None:
    net = inception(ctx)
    if "missing" in net:
      return net["missing"]
    self.ref = reference_of(ctx)
    return None

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    sde = sde_kwargs(ctx, solver, "gaussian")   # image runs start from N(0, I)
    feats, info = features(ctx, ctx.num(self), solver, rtol, atol, steps, **sde)
    out = image_metrics.fid_of_features(feats, self.ref["mu"], self.ref["sigma"], ctx.opts.fid_subsets)
    return {**out, **info, **self.ref["info"], **({"sde_noise": sde["noise"]} if sde else {})}
