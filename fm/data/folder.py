"""Reads an image folder, or a tarball of one, into a uint8 `[N, H, W, 3]` array.

`path` is a directory or a tarball (`.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`,
`.tar.xz`) read by streaming: nothing is extracted to disk, and the image bytes
are held in memory while decoding. The layout rules:

- if every image lies under one top-level folder that is not `train`/`test`
  (a tarball of a folder), that folder is the root;
- if the root has a `train/` or `test/` folder, its folders are splits and
  `split` picks one (loose files beside them are ignored); otherwise the whole
  folder is split "train";
- inside the split, images are either flat (labels None) or in class folders
  (any depth below the class folder), labelled by the index of the class name
  in sorted order;
- files ending in .png/.jpg/.jpeg are images (case-insensitive); other files and
  names starting with "." (e.g. macOS `._x.jpg`) are skipped;
- images are ordered by their sorted relative paths (`limit` keeps the first);
  all must have one size; L/LA/P/RGBA/... are converted to RGB (alpha is
  dropped, not composited) and counted per mode. Pillow decodes them in a
  thread pool;
- an image that cannot be decoded is skipped and counted, up to `MAX_UNREADABLE`
  of them (1 in 1000, at least 1); more than that refuses the folder, naming the
  first one. `read` reports both in its `report` dict (kept in source.json).

Every problem is a ValueError whose one sentence names the file.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import tarfile
import zlib

import numpy as np
import tqdm

__all__ = ["read", "content_sha", "max_unreadable", "first_shape"]

log = logging.getLogger("fm")

_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLITS = ("train", "test")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_image(rel: str) -> bool:
  parts = rel.split("/")
  return rel.lower().endswith(_SUFFIXES) and not any(p.startswith(".") for p in parts)


def _list_dir(root: str) -> dict[str, str]:
  """relative posix path -> filesystem path of every image under `root`."""
  found = {}
  for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if not x.startswith(".")]
    for f in files:
      full = os.path.join(d, f)
      rel = os.path.relpath(full, root).replace(os.sep, "/")
      if _is_image(rel):
        found[rel] = full
  return found


def _read_tar(path: str) -> dict[str, bytes]:
  """relative posix path -> bytes of every image in the tarball (one streaming pass).

  ValueError naming `path` if it is not a tarball, or is corrupt or cut short.
  """
  found = {}
  try:
    with tarfile.open(path, "r|*") as tf:
      for m in tf:
        rel = m.name
        while rel.startswith("./"):
          rel = rel[2:]
        if m.isfile() and _is_image(rel):
          found[rel] = tf.extractfile(m).read()
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    if isinstance(e, OSError) and e.errno is not None:   # a read error of the disk, not of the format
      raise
    raise ValueError(f"data path {path!r} is not a complete, readable tarball ({type(e).__name__}: "
                     f"{e or 'ended early'}); "
                     f"replace it with a complete .tar/.tar.gz of an image folder") from None
  return found


_SHA_MEMO: dict[tuple, str] = {}   # (abspath, size, mtime_ns) of a file -> its sha256, for this process


def content_sha(path: str) -> str:
  """sha256 of a file's bytes; of a directory, over (path, size, mtime_ns) of its images.

  A file's hash is remembered for this process while its size and mtime stay (a
  resumed run hashes its tarball once to check its identity and once as a cache key).
  """
  h = hashlib.sha256()
  if os.path.isdir(path):
    for rel, full in sorted(_list_dir(path).items()):
      st = os.stat(full)
      h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
  st = os.stat(path)
  key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
  if key not in _SHA_MEMO:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    _SHA_MEMO[key] = h.hexdigest()
  return _SHA_MEMO[key]


def _select(rels, split: str, where: str):
  """Applies the layout rules: -> (sorted relative paths, labels or None, classes or None)."""
  rels = sorted(rels, key=lambda r: r.split("/"))
  if not rels:
    raise ValueError(f"no .png/.jpg/.jpeg images found in {where}")
  parts = [r.split("/") for r in rels]
  tops = {p[0] for p in parts}
  if len(tops) == 1 and all(len(p) > 1 for p in parts) and parts[0][0] not in _SPLITS:
    parts = [p[1:] for p in parts]   # a tarball (or folder) holding one folder
  split_dirs = sorted({p[0] for p in parts if len(p) > 1})
  if set(split_dirs) & set(_SPLITS):
    if split not in split_dirs:
      raise ValueError(f"split {split!r} not found in {where}; it has split folders: "
                       f"{', '.join(split_dirs)}")
    picked = [(r, p[1:]) for r, p in zip(rels, parts) if len(p) > 1 and p[0] == split]
  elif split != "train":
    raise ValueError(f"{where} has no train/ or test/ folders, so all of it is split 'train' "
                     f"and split={split!r} does not exist")
  else:
    picked = list(zip(rels, parts))
  flat = [r for r, p in picked if len(p) == 1]
  if not flat:
    classes = sorted({p[0] for _, p in picked})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[p[0]] for _, p in picked], np.int32)
    return [r for r, _ in picked], labels, classes
  if len(flat) != len(picked):
    raise ValueError(f"{where} (split {split!r}) mixes loose images such as {flat[0]!r} with "
                     f"class folders; use one layout or the other")
  return flat, None, None


def max_unreadable(n: int) -> int:
  """How many undecodable images of `n` are skipped (with a count) before the folder is refused."""
  return max(1, n // 1000)


def _decode_one(item) -> tuple[np.ndarray | None, str]:
  """-> (`[H, W, 3]` uint8 or None if it cannot be decoded, the image's original mode or the error)."""
  from PIL import Image, UnidentifiedImageError   # imported here so that importing fm does not need Pillow
  src = io.BytesIO(item) if isinstance(item, bytes) else item
  try:
    with Image.open(src) as im:
      mode = im.mode
      if im.mode != "RGB":
        im = im.convert("RGB")
      return np.asarray(im), mode
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    if isinstance(e, OSError) and not isinstance(item, bytes) and e.errno is not None:
      raise   # the disk, not the image
    return None, f"{type(e).__name__}: {e}"


def _decode(names: list[str], items: list, desc: str, where: str) -> tuple[np.ndarray, dict]:
  """Decodes images in threads into one `[N', H, W, 3]` uint8 array (N' = N minus the skipped ones).

  Returns the array and `{"skipped": [names], "converted": {mode: count}}`.
  """
  n = len(items)
  shapes = np.zeros((n, 3), np.int64)
  results: list = [None] * n
  errors: dict[int, str] = {}
  modes: list = [None] * n

  def work(lo, hi):
    for i in range(lo, hi):
      a, info = _decode_one(items[i])
      if a is None:
        errors[i] = info
      else:
        results[i], modes[i], shapes[i] = a, info, a.shape
    return hi - lo

  chunk = 256
  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as ex, \
       tqdm.tqdm(total=n, desc=desc, unit="img", disable=None, leave=False) as bar:
    futures = [ex.submit(work, lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    for fut in concurrent.futures.as_completed(futures):
      bar.update(fut.result())
  if errors:
    first = min(errors)
    if len(errors) == n:
      raise ValueError(f"none of the {n} images in {where} can be decoded (first, {names[first]!r}: "
                       f"{errors[first]}); give a folder of .png/.jpg images")
    if len(errors) > max_unreadable(n):
      raise ValueError(f"{len(errors)} of the {n} images in {where} cannot be decoded (first, {names[first]!r}: "
                       f"{errors[first]}); fm skips at most {max_unreadable(n)} (1 in 1000), so repair or "
                       f"remove them")
  good = [i for i in range(n) if i not in errors]
  ref = good[0]
  for i in good:
    if tuple(shapes[i]) != tuple(shapes[ref]):
      h, w = shapes[i][:2]
      raise ValueError(f"image {names[i]!r} is {w}x{h} but {names[ref]!r} is {shapes[ref][1]}x{shapes[ref][0]} "
                       f"(WxH); all images must have one size")
  out = np.empty((len(good), *shapes[ref]), np.uint8)
  converted: dict[str, int] = {}
  for j, i in enumerate(good):
    out[j] = results[i]
    results[i] = None
    if modes[i] != "RGB":
      converted[modes[i]] = converted.get(modes[i], 0) + 1
  return out, {"skipped": [names[i] for i in sorted(errors)], "converted": converted}


def first_shape(path: str) -> tuple[int, int, int] | None:
  """`(H, W, 3)` of the first image found (all must share it), decoding one image; None if none decodes.

  Lets a model be checked against the data's shape before minutes of decoding.
  Problems with the folder itself are left to `read`, which names them.
  """
  try:
    if os.path.isdir(path):
      for d, dirs, files in os.walk(path):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
          rel = os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/")
          if _is_image(rel):
            a, _ = _decode_one(os.path.join(d, f))
            if a is not None:
              return tuple(a.shape)
      return None
    with tarfile.open(path, "r|*") as tf:
      for m in tf:
        if m.isfile() and _is_image(m.name.lstrip("./")):
          a, _ = _decode_one(tf.extractfile(m).read())
          if a is not None:
            return tuple(a.shape)
  except (tarfile.TarError, EOFError, zlib.error, OSError):
    return None
  return None


def read(path: str, split: str = "train", limit: int | None = None):
  """-> (uint8 `[N, H, W, 3]`, int32 labels `[N]` or None, class names or None, report).

  `report`: `{"skipped": [relative paths of undecodable images], "converted": {mode: count}}`.
  """
  if os.path.isdir(path):
    files = _list_dir(path)
  elif os.path.isfile(path) and path.lower().endswith(_TAR_SUFFIXES):
    files = _read_tar(path)
  else:
    raise ValueError(f"data path {path!r} is neither a directory nor a tarball "
                     f"({', '.join(_TAR_SUFFIXES)})")
  names, labels, classes = _select(files, split, path)
  if limit is not None:
    names = names[:limit]
    labels = None if labels is None else labels[:limit]
  log.info("decoding %d images of %s (split %s); this can take minutes on a CPU, and is done once: the "
           "result is cached", len(names), path, split)
  arr, report = _decode(names, [files[n] for n in names], f"decoding {os.path.basename(path)}", path)
  if report["skipped"] and labels is not None:
    keep = np.ones(len(names), bool)
    keep[[names.index(r) for r in report["skipped"]]] = False
    labels = labels[keep]
  return arr, labels, classes, report
