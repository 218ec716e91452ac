"""Fréchet Inception Distance, feature for feature as pytorch-fid 0.3.0.

    params = fid.load_inception()                  # pytorch-fid's weights file, read without torch
    mu, sigma = fid.statistics(fid.inception_features(params, images))   # images uint8 [N, H, W, 3]
    d = fid.frechet_distance(mu, sigma, *fid.load_statistics("cifar10_train.npz"))

The network (`fm.evaluate.inception`) is pytorch-fid's FID InceptionV3 with the weights of
`pt_inception-2015-12-05-6726825d.pth` (the TensorFlow FID graph ported to PyTorch), so its
pool3 features, and the distances from them, are comparable with pytorch-fid's and with
precomputed statistics files in its format. Weights are never fetched implicitly: call
`download_weights()` once on a machine with internet, or copy the file to
`default_weights_path()`.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.request

import jax
import numpy as np
from scipy import linalg

from fm.evaluate import inception
from fm.io import files

__all__ = ["WEIGHTS_URL", "WEIGHTS_FILE", "load_inception", "read_state_dict", "inception_features",
           "statistics", "frechet_distance", "load_statistics", "default_weights_path",
           "download_weights"]

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"


def default_weights_path() -> pathlib.Path:
  """Where the weights are cached: `$FM_CACHE`, else `$XDG_CACHE_HOME/fm`, else `~/.cache/fm`."""
  root = os.environ.get("FM_CACHE")
  if not root:
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fm")
  return pathlib.Path(root) / WEIGHTS_FILE


def download_weights(url: str = WEIGHTS_URL, path: str | os.PathLike | None = None,
                     sha256: str | None = None, overwrite: bool = False) -> pathlib.Path:
  """Fetches the weights file from `url` into `path` (default `default_weights_path()`).

  Streams into a temporary file beside `path` and renames it into place, so an interrupted
  download leaves nothing behind. An existing file is kept unless `overwrite`. With `sha256`
  (hex digest) a mismatching download is deleted and raises ValueError. Returns the path.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if path.exists() and not overwrite:
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  digest = hashlib.sha256()
  # A per-host cache: whoever downloads keeps it; a mismatch raises inside the block, so nothing is kept.
  with files.atomic(path, per_process=True) as out, urllib.request.urlopen(url) as response:
    while chunk := response.read(1 << 20):
      digest.update(chunk)
      out.write(chunk)
    if sha256 is not None and digest.hexdigest() != sha256.lower():
      raise ValueError(f"Download from {url} has sha256 {digest.hexdigest()}, expected {sha256}.")
  return path


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{torch name: array} from a `.pth` state dict (read without torch) or an `.npz` of it."""
  path = pathlib.Path(path)
  if path.suffix == ".npz":
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  from fm.io import torch_pickle  # pylint: disable=import-outside-toplevel
  return torch_pickle.state_dict(torch_pickle.load(path))


def load_inception(path: str | os.PathLike | None = None) -> dict:
  """FID Inception variables (on the default device) from pytorch-fid's weights file.

  `path`: the `.pth` (default `default_weights_path()`) or an `.npz` of the same tensors
  under the same names.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.exists():
    raise FileNotFoundError(
        f"No Inception weights at {path}: run fm.evaluate.fid.download_weights() where there is "
        f"internet, or copy {WEIGHTS_FILE} from {WEIGHTS_URL} there.")
  return jax.device_put(inception.params_from_state_dict(read_state_dict(path)))


@jax.jit
def _preprocess(images: jax.Array) -> jax.Array:
  return inception.preprocess(images)


@jax.jit
def _pool3(params: dict, x: jax.Array) -> jax.Array:
  return inception.InceptionV3().apply(params, x)


def inception_features(params: dict, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
  """Pool3 features `[N, 2048]` float32 of uint8 images `[N, H, W, 3]` (or `[N, H, W, 1]`).

  Images are resized to 299 x 299 and scaled to [-1, 1] as pytorch-fid does; grey images are
  repeated to RGB (as PIL's convert("RGB")). Runs in batches of `batch_size`, the last one
  padded, so one compiled network serves every batch.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be uint8 [N, H, W, 3] or [N, H, W, 1], got {images.dtype} "
                     f"{list(images.shape)}.")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n = len(images)
  if n == 0:
    return np.zeros((0, 2048), np.float32)
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
  b = min(batch_size, n)
  feats = []
  for start in range(0, n, b):
    chunk = images[start:start + b]
    if len(chunk) < b:
      chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), np.uint8)])
    feats.append(_pool3(params, _preprocess(chunk)))
  return np.concatenate([np.asarray(f) for f in feats])[:n]


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean `[D]` and covariance `[D, D]` (float64, `np.cov` with N - 1) of features `[N, D]`."""
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or len(feats) < 2:
    raise ValueError(f"feats must be [N, D] with N >= 2, got shape {list(feats.shape)}.")
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """Fréchet distance of N(mu1, sigma1), N(mu2, sigma2): |mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^1/2).

  As pytorch-fid, in float64: scipy's `sqrtm`; if it is not finite, retried with `eps` added
  to both diagonals; a complex root whose diagonal has an imaginary part beyond 1e-3 raises
  ValueError, otherwise its real part is used.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
    raise ValueError(f"Shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}.")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    offset = np.eye(len(s1)) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2).")
    covmean = covmean.real
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """`(mu, sigma)` float64 from a precomputed `.npz` (pytorch-fid / TTUR / clean-fid: "mu", "sigma")."""
  with np.load(path) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise ValueError(f"{path} has arrays {sorted(f.files)}, expected 'mu' and 'sigma'.")
    return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
