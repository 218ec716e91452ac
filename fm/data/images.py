"""Image datasets for training, held on device as uint8 `[N, H, W, C]`.

`load(path=...)` reads an image folder: a directory, or a `.tar`/`.tar.gz`/`.tgz`
of one (layout rules: `fm.data.folder`), e.g. `train/<class>/*.jpg`.

`load(dataset="cifar10")` reads a tensorflow-datasets dataset instead (prepared
data needs no TensorFlow; downloading does, and a network).

Decoded arrays are cached as `.npy` under `cache_dir` (default
`$FM_CACHE/images`, `FM_CACHE` defaulting to `~/.cache/fm`), keyed by the
source's content and the split, limit and image_size. An entry's json (written
last) holds the size and sha256 of its `.npy` files; an entry that does not
match (cut short, edited) is rebuilt with a one-line notice. The content key of a
file is the sha256 of its bytes; of a directory, the sha256 over the sorted
(relative path, size, mtime_ns) of its image files, so any ordinary rewrite
of an image changes it (an edit that keeps both size and mtime would not).

`source(...)` wraps the array as an `fm.data.base.Source`: x1 is a uniform
random minibatch (with replacement) drawn inside the jitted step, optionally
flipped left-right per image, scaled to [-1, 1]; x0 is N(0, I).
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import threading
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fm.data import folder
from fm.data.base import Source
from fm.io import files

__all__ = ["check_options", "identity", "example_shape", "check_cache_dir", "make_source", "load", "source", "image_batches", "downscale", "to_float", "to_uint8",
           "default_cache_dir"]

_CACHE_FORMAT = 2   # 2: the json holds the files' size and sha256 and the decode report
log = logging.getLogger("fm")


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("FM_CACHE", os.path.expanduser("~/.cache/fm")), "images")


def check_cache_dir(cache_dir: str) -> None:
  """ValueError (one sentence) if `cache_dir`, or a folder above it, is a file: nothing could be cached."""
  d = os.path.abspath(os.path.expanduser(cache_dir))
  while d and not os.path.exists(d):
    d = os.path.dirname(d)
  if d and not os.path.isdir(d):
    env = " (from FM_CACHE)" if os.environ.get("FM_CACHE") and cache_dir == default_cache_dir() else ""
    raise ValueError(f"image cache folder {cache_dir!r}{env} cannot be created: {d!r} is a file; "
                     f"point FM_CACHE at a directory")


# k / 127.5 - 1 in IEEE float32 for k = 0..255. A table, because XLA may turn the
# division into a multiplication by 1/127.5, which gives 1.0000001 for k = 255.
_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1)


def to_float(u8):
  """uint8 `[...]` -> float32 in [-1, 1], exactly k / 127.5 - 1 (float32)."""
  return jnp.asarray(_TO_FLOAT)[u8]


def to_uint8(x):
  """Inverse of `to_float` for float images in [-1, 1]: `round((x + 1) * 127.5)` clipped to [0, 255], uint8.

  NumPy in, NumPy out (host post-processing of samples); a JAX array (or a tracer) stays in JAX.
  """
  xp = np if isinstance(x, np.ndarray) else jnp
  return xp.round(xp.clip((x + 1.0) * 127.5, 0, 255)).astype(xp.uint8)


def _check_downscale(h: int, w: int, size: int) -> None:
  if size <= 0 or h % size or w % size or h // size != w // size:
    raise ValueError(f"image_size={size} needs square images whose side it divides, but these "
                     f"are {h}x{w} (HxW); use a divisor of the side or no image_size")


def downscale(arr: np.ndarray, size: int) -> np.ndarray:
  """Box-filter `[N, H, W, C]` uint8 down to `[N, size, size, C]`.

  Each output pixel is the mean of an f x f block (f = H / size = W / size must
  be a whole number), rounded half up in integer arithmetic.
  """
  n, h, w, c = arr.shape
  _check_downscale(h, w, size)
  f = h // size
  if f == 1:
    return arr
  out = np.empty((n, size, size, c), np.uint8)
  for i in range(0, n, 4096):   # bounds the uint32 temporary
    blocks = arr[i:i + 4096].reshape(-1, size, f, size, f, c).astype(np.uint32)
    out[i:i + 4096] = (blocks.sum(axis=(2, 4)) + f * f // 2) // (f * f)
  return out


# ----------------------------------------------------------------------------- tfds

# tfds downloads from here. An HTTPS request, not a bare TCP connect: some
# sandboxes accept any TCP connection, but no TLS handshake for this host.
_NET = "https://storage.googleapis.com/"


def _network_reachable(timeout: float = 1.5) -> bool:
  """Whether `_NET` answers an HTTPS request within `timeout` seconds."""
  ok = []

  def probe():   # in a thread: a DNS lookup can outlast the socket timeout
    try:
      urllib.request.urlopen(urllib.request.Request(_NET, method="HEAD"), timeout=timeout).close()
      ok.append(True)
    except urllib.error.HTTPError:   # an HTTP answer, even an error, means it is reachable
      ok.append(True)
    except (OSError, ValueError):
      pass

  t = threading.Thread(target=probe, daemon=True)
  t.start()
  t.join(timeout)
  return bool(ok)


def _tfds_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _tfds_prepared(name: str, data_dir: str) -> bool:
  base = name.split(":")[0]
  return bool(glob.glob(os.path.join(data_dir, base, "**", "dataset_info.json"), recursive=True))


def _tfds_builder(dataset: str):
  """The tfds builder if it can be read here; else a ValueError within ~1.5 s."""
  data_dir = _tfds_data_dir()
  if not _tfds_prepared(dataset, data_dir):
    has_tf = importlib.util.find_spec("tensorflow") is not None
    if not has_tf or not _network_reachable():
      why = "TensorFlow is not installed" if not has_tf else "the network is not reachable"
      raise ValueError(f"{dataset} is not prepared in {data_dir} and cannot be downloaded here "
                       f"({why}); pass data.path=DIR_OR_TARBALL of an image folder")
  import tensorflow_datasets as tfds
  builder = tfds.builder(dataset, data_dir=data_dir)
  if not builder.is_prepared():   # array_record, so that reading needs no TensorFlow
    builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
  return builder


def _read_tfds(builder, split: str, limit: int | None):
  try:   # random access (array_record): no TensorFlow needed
    ds = builder.as_data_source(split=split)
  except (NotImplementedError, ValueError):
    if importlib.util.find_spec("tensorflow") is None:
      raise ValueError(f"{builder.name} is prepared as {builder.info.file_format}, which needs "
                       "TensorFlow to read; pass data.path=DIR_OR_TARBALL of an image folder") from None
    import tensorflow_datasets as tfds
    ds = tfds.as_numpy(builder.as_dataset(split=split if limit is None else f"{split}[:{limit}]"))
    rows = list(ds)
  else:
    n = len(ds) if limit is None else min(limit, len(ds))
    rows = [ds[i] for i in tqdm.trange(n, desc=f"reading {builder.name}", disable=None, leave=False)]
  arr = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  feature = builder.info.features["label"] if "label" in builder.info.features else None
  labels = None if feature is None else np.array([r["label"] for r in rows], np.int32)
  classes = None if feature is None else list(feature.names)
  return arr, labels, classes


# ----------------------------------------------------------------------------- load

def _cache_paths(cache_dir: str, key: str):
  stem = os.path.join(cache_dir, key[:40])
  return stem + ".images.npy", stem + ".labels.npy", stem + ".json"


def _atomic_write(path: str, write) -> dict:
  """Writes `path` atomically through `fm.io.files`; returns its `{"size", "sha256"}`."""
  # The cache is per host (each host of a multi-process run keeps its own copy): every process may write.
  with files.atomic(path, per_process=True) as f:
    write(f)
  return _stamp(path)


def _stamp(path: str) -> dict:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def _read_cache(f_img: str, f_lab: str, f_meta: str):
  """`(arr, labels, classes, report)` of a complete, verified cache entry; None to (re)build it.

  An entry whose files do not match the sizes and sha256 in its json is rebuilt
  with a one-line notice (a cut-short copy, a full disk, an edit).
  """
  if not os.path.exists(f_meta):   # written last: its absence means no entry (or an unfinished one)
    return None
  try:
    with open(f_meta) as f:
      meta = json.load(f)
    for name, path in (("images", f_img), ("labels", f_lab)):
      want = meta["files"].get(name)
      if want is None:
        continue
      if not os.path.exists(path) or os.path.getsize(path) != want["size"]:
        raise ValueError(f"{os.path.basename(path)} has {os.path.getsize(path) if os.path.exists(path) else 0} "
                         f"bytes, not {want['size']}")
      if _stamp(path)["sha256"] != want["sha256"]:
        raise ValueError(f"{os.path.basename(path)} does not match its sha256")
    arr = np.load(f_img)
    labels = np.load(f_lab) if "labels" in meta["files"] else None
    return arr, labels, meta["classes"], meta["report"]
  except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
    log.warning("notice: image cache entry %s is damaged (%s); rebuilding it", f_meta, e)
    return None


def _report(report: dict, where: str, n: int) -> None:
  """One line for the images skipped and one for the images converted to RGB (if any)."""
  if report["skipped"]:
    log.warning("warning: %d image(s) of %s cannot be decoded and were skipped (first: %s), %d used; "
                "recorded in source.json", len(report["skipped"]), where, report["skipped"][0], n)
  if report["converted"]:
    modes = ", ".join(f"{k} {v}" for k, v in sorted(report["converted"].items()))
    log.info("note: %d image(s) of %s were converted to RGB (%s; alpha dropped); recorded in source.json",
             sum(report["converted"].values()), where, modes)


def _check_options(path, dataset, split, image_size, limit):
  if (path is None) == (dataset is None):
    raise ValueError("give exactly one of data.path (an image folder or tarball) and "
                     f"data.dataset (a tensorflow-datasets name); got path={path!r}, dataset={dataset!r}")
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a name such as 'train' or 'test', got {split!r}")
  for name, v in (("image_size", image_size), ("limit", limit)):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
      raise ValueError(f"{name} must be a positive int or None, got {v!r}")


def load(path: str | None = None, dataset: str | None = None, split: str = "train",
         image_size: int | None = None, limit: int | None = None,
         cache_dir: str | None = None) -> tuple[np.ndarray, dict]:
  """Loads an image dataset as uint8 `[N, H, W, 3]`, through the cache.

  Args:
    path: image folder, or a tarball of one (layout rules: `fm.data.folder`).
    dataset: tensorflow-datasets name instead of `path`, e.g. "cifar10".
    split: "train" or "test": a split folder, or "train" for a folder without them.
    image_size: box-filter the images down to `image_size` square once, at load time.
    limit: keep the first `limit` images in sorted order (tfds: in index order).
    cache_dir: where decoded arrays are kept (default `default_cache_dir()`).

  Returns:
    `(arr, meta)` with `arr` uint8 `[N, H, W, 3]` and `meta` a dict: `description`,
    `sha` (content key of the source, None for tfds), `key` (cache key),
    `labels` (int32 `[N]` or None), `classes` (names or None), `cached` (bool).
  """
  _check_options(path, dataset, split, image_size, limit)
  builder = None
  if path is not None:
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ValueError(f"data path {path!r} does not exist; pass an image folder or a tarball of one")
    sha = folder.content_sha(path)
    origin = {"path_sha256": sha}
    where = path
  else:
    builder = _tfds_builder(dataset)
    sha = None
    origin = {"tfds": builder.name, "version": str(builder.version), "data_dir": builder.data_dir}
    where = f"tfds:{builder.name}:{builder.version}"
  spec = dict(format=_CACHE_FORMAT, split=split, image_size=image_size, limit=limit, **origin)
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
  cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
  f_img, f_lab, f_meta = _cache_paths(cache_dir, key)
  check_cache_dir(cache_dir)
  entry = _read_cache(f_img, f_lab, f_meta)
  if entry is not None:
    arr, labels, classes, report = entry
    cached = True
  else:
    if builder is None:
      arr, labels, classes, report = folder.read(path, split, limit)
    else:
      arr, labels, classes = _read_tfds(builder, split, limit)
      report = {"skipped": [], "converted": {}}
    if image_size is not None:
      arr = downscale(arr, image_size)
    os.makedirs(cache_dir, exist_ok=True)
    stamps = {"images": _atomic_write(f_img, lambda f: np.save(f, arr))}
    if labels is not None:
      stamps["labels"] = _atomic_write(f_lab, lambda f: np.save(f, labels))
    info = json.dumps(dict(spec=spec, classes=classes, shape=arr.shape, files=stamps, report=report), indent=1)
    _atomic_write(f_meta, lambda f: f.write(info.encode()))
    cached = False
  _report(report, where, len(arr))
  n, h, w, _ = arr.shape
  desc = f"images {where} split={split} N={n} {h}x{w}"
  if classes is not None:
    desc += f" classes={len(classes)}"
  if image_size is not None:
    desc += " (box-downscaled)"
  if limit is not None:
    desc += f" limit={limit}"
  if sha is not None:   # a directory's hash is over its listing (see the module docstring)
    desc += f" {'listing_sha256' if os.path.isdir(path) else 'sha256'}={sha}"
  if report["skipped"]:
    desc += f" skipped_unreadable={len(report['skipped'])}"
  return arr, dict(description=desc, sha=sha, key=key, labels=labels, classes=classes,
                   cached=cached, skipped=report["skipped"], converted=report["converted"])


# ----------------------------------------------------------------------------- source

def image_batches(batch_size: int, hflip: bool = True, labelled: bool = False):
  """`batch_fn(key, {"images": uint8 [N, H, W, C]}) -> (x0, x1)`, both float32 `[B, H, W, C]`.

  x1: `jax.random.randint` indices (with replacement) from the first of
  `split(key, 3)`, left-right flips from `bernoulli(0.5)` on the second, then
  `to_float`; x0: `normal` on the third. `labelled`: the data also hold
  `"labels"` int32 `[N]` and the batch is `(x0, x1, y1)` with `y1 = labels[idx]`
  (the same indices, so x0 and x1 are those of the unlabelled batch).
  """
  def batch_fn(key, data):
    images = data["images"]
    k_idx, k_flip, k_x0 = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
    x = images[idx]
    if hflip:
      flip = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
      x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    x1 = to_float(x)
    x0 = jax.random.normal(k_x0, x1.shape, jnp.float32)
    if labelled:
      return x0, x1, data["labels"][idx]
    return x0, x1
  return batch_fn


def source(path: str | None = None, dataset: str | None = None, split: str = "train",
           batch_size: int = 128, hflip: bool = True, image_size: int | None = None,
           limit: int | None = None, cache_dir: str | None = None, num_classes: int = 0) -> Source:
  """An images `Source`: the dataset put on device as uint8, batches drawn in the step.

  `num_classes > 0` (a conditional run): the labels go on device beside the
  images and the batch is `(x0, x1, y1)`; ValueError unless the data have
  exactly `num_classes` classes.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  arr, meta = load(path=path, dataset=dataset, split=split, image_size=image_size,
                   limit=limit, cache_dir=cache_dir)
  shape = tuple(arr.shape[1:])
  labels, classes = meta["labels"], meta["classes"]
  if num_classes:
    if labels is None:
      raise ValueError(f"model.num_classes={num_classes} asks for a conditional run, but the images of "
                       f"{path or dataset} have no labels (no class sub-folders / no 'label' feature); "
                       f"use labelled data or model.num_classes=0")
    if len(classes) != num_classes:
      raise ValueError(f"model.num_classes={num_classes} but the images of {path or dataset} have "
                       f"{len(classes)} classes; set model.num_classes={len(classes)}")

  def sample_x0(key, n):
    return jax.random.normal(key, (n, *shape), jnp.float32)

  data = {"images": jax.device_put(arr)}
  if num_classes:
    data["labels"] = jax.device_put(np.asarray(labels, np.int32))
  probs = None
  if labels is not None:
    counts = np.bincount(labels, minlength=len(classes))
    probs = tuple(float(c) / len(labels) for c in counts)
  return Source(name="images", shape=shape, batch_fn=image_batches(batch_size, hflip, labelled=bool(num_classes)),
                data=data, sample_x0=sample_x0, description=meta["description"], kind="images",
                classes=None if classes is None else tuple(classes), class_probs=probs,
                labelled=bool(num_classes),
                info={"sha256": meta["sha"], "num_images": int(arr.shape[0]), "skipped": meta["skipped"],
                      "converted": meta["converted"]})


# ----------------------------------------------------------------------------- registry

def _from_config(path="", dataset="", split="train", hflip=True, image_size=0, limit=0):
  """Config conventions (`""` and `0` mean unset; a path wins over a dataset) -> `load` arguments."""
  if not isinstance(hflip, bool):
    raise ValueError(f"data.hflip must be true or false, got {hflip!r}")
  for name, v in (("image_size", image_size), ("limit", limit)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ValueError(f"data.{name} must be an integer >= 0 (0 = off), got {v!r}")
  if path and not os.path.exists(path):
    raise ValueError(f"data.path {path!r} does not exist; give an image folder or a tarball of one "
                     f"(e.g. ../shared/data/cifar10-jpeg.tar.gz), or data.path='' and data.dataset=cifar10")
  return dict(path=path or None, dataset=None if path else (dataset or None), split=split,
              image_size=image_size or None, limit=limit or None), hflip


def example_shape(**options) -> tuple[int, ...] | None:
  """The shape of one example `(H, W, 3)` without loading the data (one image decoded); None if unknown."""
  kwargs, _ = _from_config(**options)
  if kwargs["path"] is None:
    return None
  shape = folder.first_shape(kwargs["path"])
  if shape is None or kwargs["image_size"] is None:
    return shape
  _check_downscale(shape[0], shape[1], kwargs["image_size"])
  return (kwargs["image_size"], kwargs["image_size"], shape[2])


def identity(**options) -> str | None:
  """The content key of the configured data (`folder.content_sha` of data.path), None for tfds."""
  kwargs, _ = _from_config(**options)
  return folder.content_sha(kwargs["path"]) if kwargs["path"] else None


def check_options(num_classes: int = 0, **options) -> None:
  """Cheap validation of the config's `data` options (nothing is read or decoded).

  Whether the images have `num_classes` classes is known only once they are
  listed, so `make_source` checks that.
  """
  del num_classes
  kwargs, _ = _from_config(**options)
  _check_options(kwargs["path"], kwargs["dataset"], kwargs["split"], kwargs["image_size"], kwargs["limit"])


def make_source(batch_size: int, num_classes: int = 0, **options) -> Source:
  """The registry's entry point: `source(...)` from the config's `data` options."""
  kwargs, hflip = _from_config(**options)
  return source(batch_size=batch_size, hflip=hflip, num_classes=num_classes, **kwargs)
