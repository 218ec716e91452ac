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
  dropped, not composited). Pillow decodes them in a thread pool.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import tarfile

import numpy as np
import tqdm

__all__ = ["read", "content_sha"]

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
  """relative posix path -> bytes of every image in the tarball (one streaming pass)."""
  found = {}
  with tarfile.open(path, "r|*") as tf:
    for m in tf:
      rel = m.name
      while rel.startswith("./"):
        rel = rel[2:]
      if m.isfile() and _is_image(rel):
        found[rel] = tf.extractfile(m).read()
  return found


def content_sha(path: str) -> str:
  """sha256 of a file's bytes; of a directory, over (path, size, mtime_ns) of its images."""
  h = hashlib.sha256()
  if os.path.isdir(path):
    for rel, full in sorted(_list_dir(path).items()):
      st = os.stat(full)
      h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  else:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


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


def _decode_one(item) -> np.ndarray:
  from PIL import Image   # imported here so that importing fm does not need Pillow
  src = io.BytesIO(item) if isinstance(item, bytes) else item
  with Image.open(src) as im:
    if im.mode != "RGB":
      im = im.convert("RGB")
    return np.asarray(im)


def _decode(names: list[str], items: list, desc: str) -> np.ndarray:
  """Decodes images in threads into one `[N, H, W, 3]` uint8 array."""
  first = _decode_one(items[0])
  out = np.empty((len(items), *first.shape), np.uint8)
  bad = []

  def work(lo, hi):
    for i in range(lo, hi):
      a = _decode_one(items[i])
      if a.shape != first.shape:
        bad.append((i, a.shape))
        return hi - lo
      out[i] = a
    return hi - lo

  chunk = 256
  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as ex, \
       tqdm.tqdm(total=len(items), desc=desc, unit="img", disable=None, leave=False) as bar:
    futures = [ex.submit(work, lo, min(lo + chunk, len(items)))
               for lo in range(0, len(items), chunk)]
    for fut in concurrent.futures.as_completed(futures):
      bar.update(fut.result())
  if bad:
    i, shape = min(bad)
    raise ValueError(f"image {names[i]!r} is {shape[1]}x{shape[0]} but {names[0]!r} is "
                     f"{first.shape[1]}x{first.shape[0]} (WxH); all images must have one size")
  return out


def read(path: str, split: str = "train", limit: int | None = None):
  """-> (uint8 `[N, H, W, 3]`, int32 labels `[N]` or None, class names or None)."""
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
  arr = _decode(names, [files[n] for n in names], f"decoding {os.path.basename(path)}")
  return arr, labels, classes
