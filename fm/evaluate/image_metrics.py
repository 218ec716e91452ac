"""FID, KID and bits/dim of an image run's EMA model: the image metrics of `fm eval`.

FID / KID: `num` images are generated from x0 ~ N(0, I) with the chosen solver in
batches (`sampling.sample`: sample i uses noise key `fold_in(PRNGKey(seed), i)`,
as `fm sample`), mapped to uint8 (`round((x + 1) 127.5)`, clipped), passed
through the FID Inception (`fid.inception_features`, with the chosen preprocessing);
FID is their Fréchet distance to the reference statistics (with its spread over
disjoint subsets), KID their unbiased MMD^2 to the reference features (`kid`).

Bits/dim: held-out images (the source's test split, else the images after the
first `data.limit` of the training split) through `fm.likelihood.bits_per_dim`
in batches under one jit; batch j draws its dequantisation noise and probes
from `fold_in(fold_in(PRNGKey(seed), 0xB9D), j)`.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fm import likelihood, solvers
from fm.data import images as images_lib
from fm.evaluate import fid, kid, sampling
from fm import recipe

__all__ = ["missing_weights", "features_of_run", "fid_of_features", "kid_of_features", "held_out", "bpd_of_run"]


def missing_weights(path: str | os.PathLike) -> str:
  """The one sentence printed when FID / KID are skipped for want of Inception weights."""
  return f"FID and KID skipped: {fid.missing_weights(path)}."


def features_of_run(run: recipe.Run, params, sample_x0, inception: dict, *, num: int, seed: int, solver: str,
                    rtol: float, atol: float, steps: int | None, batch_size: int = 256, fid_batch_size: int = 50,
                    preprocessing: str = fid.DEFAULT_PREPROCESSING, progress: bool = True,
                    labels: np.ndarray | None = None, guidance: float = 1.0, noise: float = 0.0,
                    path=None) -> tuple[np.ndarray, dict[str, Any]]:
  """Pool3 features `[num, 2048]` of `num` generated images and the sampling's NFE and settings.

  A conditional run samples image i with label `labels[i]` (`[num]`, e.g. drawn
  from the training label distribution) at scale `guidance`; the settings add
  `guidance` and `network_passes` (mean per batch). `noise`, `path`: an SDE
  solver's diffusion scale and the run's path.
  """
  samples, info = sampling.sample(run.model, params, sample_x0, jax.random.PRNGKey(seed), num, batch_size,
                                  solver, rtol=rtol, atol=atol, steps=steps, postprocess=images_lib.to_uint8,
                                  progress=progress, desc=f"FID samples ({solver})", labels=labels,
                                  guidance=guidance, noise=noise, path=path)
  feats = fid.inception_features(inception, samples, batch_size=fid_batch_size, preprocessing=preprocessing)
  nfe = info["nfe_per_batch"]
  out = {"nfe": float(np.mean(nfe)), "nfe_total": info["nfe_total"], "num_samples": num,
         "batch_size": batch_size, "success": info["success"], "fid_preprocessing": preprocessing}
  if labels is not None:
    out.update(guidance=float(guidance), network_passes=info["network_passes_total"] / len(nfe))
  return feats, out


def fid_of_features(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray, subsets: int = 5) -> dict[str, Any]:
  """FID of features `[N, D]` against `(mu, sigma)`, with the mean and std over `subsets` disjoint subsets.

  The subset fields are None when N < 2 `subsets` (or `subsets` < 2).
  """
  out = {"value": fid.frechet_distance(*fid.statistics(feats), mu, sigma), "fid_subsets": None,
         "fid_subset_size": None, "fid_subsets_mean": None, "fid_subsets_std": None}
  if subsets >= 2 and len(feats) // subsets >= 2:
    mean, std, size = fid.frechet_distance_subsets(feats, mu, sigma, subsets)
    out.update(fid_subsets=subsets, fid_subset_size=size, fid_subsets_mean=mean, fid_subsets_std=std)
  return out


def kid_of_features(feats: np.ndarray, ref_feats: np.ndarray, seed: int) -> dict[str, Any]:
  """KID of features `[N, D]` against reference features (`kid.kid`: 100 subsets of min(1000, N))."""
  r = kid.kid(feats, ref_feats, seed=seed)
  return {"value": r["mean"], "kid_std": r["std"], "kid_subset_size": r["subset_size"],
          "kid_subsets": r["num_subsets"]}


def held_out(kwargs: Mapping[str, Any], num: int, seed: int, with_labels: bool = False):
  """Held-out uint8 images `[n, H, W, 3]` (n = min(num, available)) and where they come from.

  `with_labels`: `(images, labels [n] or None, where)` instead of `(images, where)`.

  `kwargs` are the run's `fm.data.images.load` arguments. The test split is used
  if the source has one; else, for a run trained on the first `limit` images, the
  images after them. When fewer than all are taken, a seeded random subset (in
  source order). Returns `(None, sentence)` if there are no held-out images.
  """
  from fm.data import images as images_lib  # pylint: disable=g-import-not-at-top
  common = dict(path=kwargs.get("path"), dataset=kwargs.get("dataset"), image_size=kwargs.get("image_size"))
  split, limit = kwargs.get("split", "train"), kwargs.get("limit")
  arr = None
  if split != "test":
    try:
      arr, meta = images_lib.load(split="test", **common)
      where = meta["description"]
    except ValueError as e:
      if "split" not in str(e):
        raise
  if arr is None:
    if not limit:
      why = (f"bits/dim skipped: the data source has no test split and the run trained on all of "
             f"split {split!r}, so no images are held out (train with data.limit=N to hold out the rest).")
      return (None, None, why) if with_labels else (None, why)
    arr, meta = images_lib.load(split=split, **common)
    arr = arr[limit:]
    meta = {**meta, "labels": None if meta["labels"] is None else meta["labels"][limit:]}
    where = f"{meta['description']}, images {limit}.. (after data.limit)"
    if not len(arr):
      why = f"bits/dim skipped: split {split!r} has no images beyond data.limit={limit} to hold out."
      return (None, None, why) if with_labels else (None, why)
  labels = meta["labels"]
  if num < len(arr):
    idx = np.sort(np.random.default_rng(seed).choice(len(arr), num, replace=False))
    where += f"; random subset of {num} of {len(arr)} (numpy default_rng({seed}))"
    arr = arr[idx]
    labels = None if labels is None else labels[idx]
  return (arr, labels, where) if with_labels else (arr, where)


@functools.partial(jax.jit, static_argnames=("model", "divergence", "num_probes", "solver", "rtol", "atol",
                                             "steps"))
def _bpd_batch(model, params, images, key, divergence, num_probes, solver, rtol, atol, steps, labels=None):
  v = recipe.velocity(model, params) if labels is None else recipe.velocity(model, params, y=labels)
  bpd, info = likelihood.bits_per_dim(v, images, key=key, divergence=divergence, num_probes=num_probes,
                                      solver=solver, rtol=rtol, atol=atol, steps=steps)
  return bpd, info["nfe"], info["success"]


def bpd_of_run(run: recipe.Run, params, images: np.ndarray, *, seed: int, divergence: str,
               num_probes: int = 1, solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
               steps: int | None = None, batch_size: int = 64, labels: np.ndarray | None = None,
               progress: bool = False) -> dict[str, Any]:
  """Mean bits/dim of uint8 `images` `[N, H, W, C]` with its standard error, NFE and settings.

  progress: a progress bar over the images, with its time estimate (each takes seconds on a CPU).

  A conditional run passes the images' true `labels` `[N]`: the bits/dim are
  then conditional on them, -log2 p(x | y) / dim, with the conditional field.

  The last batch is padded with copies of its first image (one compiled shape), and
  the padding dropped. With dopri5 a batch shares its step sizes, so values depend
  on the batch at the level of the tolerance.
  """
  n, d = len(images), math.prod(images.shape[1:])
  b = min(batch_size, n)
  base = jax.random.fold_in(jax.random.PRNGKey(seed), 0xB9D)
  kw = dict(rtol=float(rtol), atol=float(atol), steps=None) if solver in solvers.ADAPTIVE else dict(
      rtol=1e-5, atol=1e-5, steps=int(steps))
  out, nfe, ok = [], [], True
  bar = tqdm.tqdm(total=n, desc="bits/dim", unit="img", disable=None if progress else True, leave=False)
  for j, start in enumerate(range(0, n, b)):
    chunk = images[start:start + b]
    count = len(chunk)
    if count < b:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - count, axis=0)])
    if labels is not None:
      lab = np.asarray(labels[start:start + b], np.int32)
      kw["labels"] = jnp.asarray(np.concatenate([lab, np.repeat(lab[:1], b - count)]))
    bpd, e, s = _bpd_batch(run.model, params, jnp.asarray(chunk), jax.random.fold_in(base, j),
                           divergence, int(num_probes), solver, **kw)
    out.append(np.asarray(bpd)[:count])
    nfe.append(int(e))
    ok = ok and bool(s)
    bar.update(count)
  bar.close()
  bpd = np.concatenate(out).astype(np.float64)
  passes = 1 + 2 * (d if divergence == "exact" else num_probes)
  return {"value": float(bpd.mean()), "bpd_sem": float(bpd.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
          "num_images": n, "divergence": divergence if divergence == "exact" else "hutchinson-rademacher",
          "num_probes": None if divergence == "exact" else int(num_probes), "nfe": float(np.mean(nfe)),
          "nfe_total": int(sum(nfe)), "network_passes_per_nfe": passes, "batch_size": b, "success": ok,
          "dequantization": "uniform, one draw per image",
          **({"conditional_on": "true labels"} if labels is not None else {})}
