"""FID reference statistics: from an image source of `fm.data`, from a file, and cached.

    mu, sigma, feats, info = reference.from_source(load_kwargs(config.data), params, weights_sha)
    mu, sigma, info = reference.from_file("cifar10_train.npz")   # pytorch-fid / clean-fid mu, sigma

Statistics computed from a source are cached under `cache_dir()` (beside the
Inception weights: `$FM_CACHE/fid_stats`), keyed by the data's content key
(`fm.data.images.load`: content hash of the folder or tarball, split, limit,
image size), the sha256 of the Inception weights file and the preprocessing
("tf" or "pytorch-fid"), so a different dataset, subset, network or input path
never reuses them. Files hold `mu` `[2048]` and `sigma` `[2048, 2048]` (float64)
as pytorch-fid's `--save-stats` writes them, plus provenance strings (`num`,
`data`, `inception_sha256`, `fid_preprocessing`, `fm_commit`); beside each, the
features themselves (`<key>_features.npy`, float32 `[N, 2048]`) for KID.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from fm import provenance
from fm.evaluate import fid, records
from fm.io import files

__all__ = ["STATS_FORMAT", "load_kwargs", "default_out", "cache_dir", "save", "compute", "from_source",
           "from_file", "write"]

STATS_FORMAT = 1


def load_kwargs(data: Mapping[str, Any]) -> dict[str, Any]:
  """A config's `data` section (registry conventions: "" and 0 unset) -> `fm.data.images.load` kwargs.

  Raises ValueError (one sentence) unless it names a valid image source.
  """
  from fm import data as data_lib  # pylint: disable=g-import-not-at-top
  name, options = data_lib.split_options(dict(data))
  if name != "images":
    raise ValueError(f"FID statistics need an image source (data.name='images'), got data.name={name!r}")
  data_lib.check(name, **options)
  path = options.get("path") or None
  return dict(path=path, dataset=None if path else (options.get("dataset") or None),
              split=options.get("split", "train"), image_size=options.get("image_size") or None,
              limit=options.get("limit") or None)


def default_out(kwargs: Mapping[str, Any]) -> str:
  """`<dataset or folder name>_<split>.npz`, e.g. cifar10_train.npz or cifar10-jpeg_train.npz."""
  if kwargs.get("path"):
    name = os.path.basename(os.path.normpath(kwargs["path"]))
    for ext in (".tar.gz", ".tgz", ".tar"):
      if name.endswith(ext):
        name = name[:-len(ext)]
  else:
    name = str(kwargs["dataset"]).split(":")[0]
  size = f"_{kwargs['image_size']}px" if kwargs.get("image_size") else ""
  return f"{name}_{kwargs.get('split', 'train')}{size}.npz"


def cache_dir() -> pathlib.Path:
  """Where statistics computed from data sources are kept: beside the Inception weights."""
  return fid.default_weights_path().parent / "fid_stats"


def save(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> None:
  """Writes `mu`, `sigma` (and provenance strings) to an `.npz`, atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # A cache beside the weights (per host) or fm fid-stats' output: whoever computed it writes it.
  files.write_npz(path, per_process=True, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                  **{k: np.asarray(str(v)) for k, v in meta.items()})


def compute(images: np.ndarray, params: dict, batch_size: int = 50,
            preprocessing: str = fid.DEFAULT_PREPROCESSING) -> tuple[np.ndarray, np.ndarray]:
  """`(mu, sigma)` float64 of the pool3 features of uint8 images `[N, H, W, 3]`."""
  return fid.statistics(fid.inception_features(params, images, batch_size=batch_size, preprocessing=preprocessing))


SUBSET_SEED = 0   # the random reference subset (`num`) is the same for every run and seed, so caches are shared


def subset(n: int, num: int | None) -> np.ndarray | None:
  """Sorted indices `[num]` of a random subset of `n` items (numpy `default_rng(SUBSET_SEED)`, without
  replacement); None when `num` is None or covers all `n`. A smaller `num` is not a prefix of a larger one."""
  if num is None or num >= n:
    return None
  if num < 2:
    raise ValueError(f"a reference subset needs at least 2 images, got {num}")
  return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, num, replace=False))


def from_source(kwargs: Mapping[str, Any], params: dict, weights_sha256: str, batch_size: int = 50,
                use_cache: bool = True, preprocessing: str = fid.DEFAULT_PREPROCESSING, num: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
  """Statistics and features of an image source (`load_kwargs`), through the cache.

  num: use a random subset of this many of the source's images (`subset`), e.g. 5000 of
    CIFAR-10's 50 000 on a CPU, where Inception runs at ~15 images/s; None: all of them.

  Returns `(mu, sigma, features [N, 2048], info)`; `info`: `reference` (the cache file),
  `reference_data` (the source's description, and the subset if any), `reference_num` (images),
  `reference_cached` (whether the file was reused).
  """
  from fm.data import images as images_lib  # pylint: disable=g-import-not-at-top
  arr, meta = images_lib.load(**kwargs)
  idx = subset(len(arr), num)
  description = meta["description"]
  spec = {"format": STATS_FORMAT, "data_key": meta["key"], "inception_sha256": weights_sha256,
          "preprocessing": preprocessing}
  if idx is not None:
    arr = arr[idx]
    description += f"; random subset of {len(idx)} (numpy default_rng({SUBSET_SEED}))"
    spec["subset"] = [len(idx), SUBSET_SEED]
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
  path = cache_dir() / f"{key[:40]}.npz"
  feats_path = cache_dir() / f"{key[:40]}_features.npy"
  cached = use_cache and path.exists() and feats_path.exists()
  if cached:
    mu, sigma = fid.load_statistics(path)
    feats = np.load(feats_path)
  else:
    feats = fid.inception_features(params, arr, batch_size=batch_size, preprocessing=preprocessing)
    mu, sigma = fid.statistics(feats)
    feats_path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic(feats_path, per_process=True) as f:   # a per-host cache, like the statistics
      np.save(f, feats)
    save(path, mu, sigma, num=len(arr), data=description, inception_sha256=weights_sha256,
         fid_preprocessing=preprocessing, fm_commit=provenance.commit_label())
  return mu, sigma, feats, {"reference": str(path), "reference_data": description,
                            "reference_num": len(arr), "reference_cached": bool(cached)}


def from_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Precomputed statistics (`mu`, `sigma`: fm, pytorch-fid, TTUR or clean-fid); `(mu, sigma, info)`.

  `info` carries `reference_preprocessing` when the file records it (fm's files do).
  """
  mu, sigma = fid.load_statistics(path)
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"{path} holds mu {list(mu.shape)} and sigma {list(sigma.shape)}, expected [D] and [D, D]")
  info = {"reference": os.fspath(path), "reference_sha256": records.file_sha256(path)}
  with np.load(path) as f:
    for k, name in (("num", "reference_num"), ("data", "reference_data"),
                    ("fid_preprocessing", "reference_preprocessing")):
      if k in f.files:
        info[name] = str(f[k])
  return mu, sigma, info


def write(kwargs: Mapping[str, Any], out: str | os.PathLike, inception: str | os.PathLike | None = None,
          batch_size: int = 50, preprocessing: str = fid.DEFAULT_PREPROCESSING) -> dict[str, Any]:
  """`fm fid-stats`: statistics of an image source into `out`; returns what was written."""
  from fm.data import images as images_lib  # pylint: disable=g-import-not-at-top
  weights = pathlib.Path(inception) if inception else fid.default_weights_path()
  params = fid.load_inception(weights)   # FileNotFoundError says how to get the weights
  sha = records.file_sha256(weights)
  arr, meta = images_lib.load(**kwargs)
  mu, sigma = compute(arr, params, batch_size, preprocessing)
  save(out, mu, sigma, num=len(arr), data=meta["description"], inception_sha256=sha,
       fid_preprocessing=preprocessing, fm_commit=provenance.commit_label())
  return {"out": os.fspath(out), "num": len(arr), "data": meta["description"], "inception": str(weights),
          "inception_sha256": sha, "fid_preprocessing": preprocessing}
