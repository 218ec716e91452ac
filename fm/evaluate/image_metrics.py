"""FID and bits/dim of an image run's EMA model: the image metrics of `fm eval`.

FID: `num` images are generated from x0 ~ N(0, I) with the chosen solver in
batches (`sampling.sample`: sample i uses noise key `fold_in(PRNGKey(seed), i)`,
as `fm sample`), mapped to uint8 (`round((x + 1) 127.5)`, clipped), passed
through pytorch-fid's Inception (`fid.inception_features`) and their Fréchet
distance to the reference statistics is returned.

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

from fm import likelihood, solvers
from fm.data import images as images_lib
from fm.evaluate import fid, sampling
from fm import recipe

__all__ = ["missing_weights", "frechet_of_samples", "fid_of_run", "held_out", "bpd_of_run"]


def missing_weights(path: str | os.PathLike) -> str:
  """The one sentence printed when FID is skipped for want of Inception weights."""
  return (f"FID skipped: no Inception weights at {path}; get them with `python -c \"from fm.evaluate "
          f"import fid; fid.download_weights()\"` (downloads {fid.WEIGHTS_URL} to "
          f"{fid.default_weights_path()}) or pass --inception PATH to a copy of {fid.WEIGHTS_FILE}.")


def frechet_of_samples(samples: np.ndarray, inception: dict, mu: np.ndarray, sigma: np.ndarray,
                       batch_size: int = 50) -> float:
  """FID of uint8 images `[N, H, W, 3]` against reference statistics `(mu, sigma)`."""
  m, s = fid.statistics(fid.inception_features(inception, samples, batch_size=batch_size))
  return fid.frechet_distance(m, s, mu, sigma)


def fid_of_run(run: recipe.Run, params, sample_x0, inception: dict, mu: np.ndarray, sigma: np.ndarray,
               *, num: int, seed: int, solver: str, rtol: float, atol: float, steps: int | None,
               batch_size: int = 256, fid_batch_size: int = 50, progress: bool = True) -> dict[str, Any]:
  """FID of `num` generated images; returns `value`, NFE (mean per batch and total) and settings."""
  samples, info = sampling.sample(run.model, params, sample_x0, jax.random.PRNGKey(seed), num, batch_size,
                                  solver, rtol=rtol, atol=atol, steps=steps, postprocess=images_lib.to_uint8,
                                  progress=progress, desc=f"FID samples ({solver})")
  value = frechet_of_samples(samples, inception, mu, sigma, fid_batch_size)
  nfe = info["nfe_per_batch"]
  return {"value": value, "nfe": float(np.mean(nfe)), "nfe_total": info["nfe_total"], "num_samples": num,
          "batch_size": batch_size, "success": info["success"]}


def held_out(kwargs: Mapping[str, Any], num: int, seed: int) -> tuple[np.ndarray | None, str]:
  """Held-out uint8 images `[n, H, W, 3]` (n = min(num, available)) and where they come from.

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
      return None, (f"bits/dim skipped: the data source has no test split and the run trained on all of "
                    f"split {split!r}, so no images are held out (train with data.limit=N to hold out the rest).")
    arr, meta = images_lib.load(split=split, **common)
    arr = arr[limit:]
    where = f"{meta['description']}, images {limit}.. (after data.limit)"
    if not len(arr):
      return None, f"bits/dim skipped: split {split!r} has no images beyond data.limit={limit} to hold out."
  if num < len(arr):
    idx = np.sort(np.random.default_rng(seed).choice(len(arr), num, replace=False))
    where += f"; random subset of {num} of {len(arr)} (numpy default_rng({seed}))"
    arr = arr[idx]
  return arr, where


@functools.partial(jax.jit, static_argnames=("model", "divergence", "num_probes", "solver", "rtol", "atol",
                                             "steps"))
def _bpd_batch(model, params, images, key, divergence, num_probes, solver, rtol, atol, steps):
  v = recipe.velocity(model, params)
  bpd, info = likelihood.bits_per_dim(v, images, key=key, divergence=divergence, num_probes=num_probes,
                                      solver=solver, rtol=rtol, atol=atol, steps=steps)
  return bpd, info["nfe"], info["success"]


def bpd_of_run(run: recipe.Run, params, images: np.ndarray, *, seed: int, divergence: str,
               num_probes: int = 1, solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
               steps: int | None = None, batch_size: int = 64) -> dict[str, Any]:
  """Mean bits/dim of uint8 `images` `[N, H, W, C]` with its standard error, NFE and settings.

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
  for j, start in enumerate(range(0, n, b)):
    chunk = images[start:start + b]
    count = len(chunk)
    if count < b:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - count, axis=0)])
    bpd, e, s = _bpd_batch(run.model, params, jnp.asarray(chunk), jax.random.fold_in(base, j),
                           divergence, int(num_probes), solver, **kw)
    out.append(np.asarray(bpd)[:count])
    nfe.append(int(e))
    ok = ok and bool(s)
  bpd = np.concatenate(out).astype(np.float64)
  passes = 1 + 2 * (d if divergence == "exact" else num_probes)
  return {"value": float(bpd.mean()), "bpd_sem": float(bpd.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
          "num_images": n, "divergence": divergence if divergence == "exact" else "hutchinson-rademacher",
          "num_probes": None if divergence == "exact" else int(num_probes), "nfe": float(np.mean(nfe)),
          "nfe_total": int(sum(nfe)), "network_passes_per_nfe": passes, "batch_size": b, "success": ok,
          "dequantization": "uniform, one draw per image"}
