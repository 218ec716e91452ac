"""Conditional runs: which labels to sample, the per-class toy metrics, the guidance-sweep table.

Labels for sampling come from `--class K` (repeatable: an equal share of each
listed class, in blocks, in the order given), `--classes all` (an equal share of
every class) or, by default, from the training label distribution
(`source.json`'s `class_probs`), which is what FID compares against.

Toy metrics of a conditional run (the target's labelled held-out points are the
reference):
  w2_per_class    W2(samples of class k, held-out target points of class k) per k
  mode_accuracy   fraction of class-k samples whose nearest mode centre is mode k
                  (toys with modes: 8gaussians)
"""
from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fm import metrics
from fm.io import files

__all__ = ["class_labels", "training_labels", "sample_labels", "w2_per_class", "mode_accuracy", "label_key",
           "write_guidance_sweep"]

_w2 = jax.jit(metrics.w2)


def label_key(seed: int) -> jax.Array:
  """The key of labels drawn from the training distribution (a stream sampling never uses for noise)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0x1ABE1)


def class_labels(classes: Sequence[int], num: int, num_classes: int) -> np.ndarray:
  """int32 `[num]`: an equal share `num / len(classes)` of each class, in blocks in the given order.

  ValueError (one sentence) for a class outside [0, num_classes) or a `num`
  that the classes do not divide.
  """
  classes = [int(k) for k in classes]
  bad = [k for k in classes if not 0 <= k < num_classes]
  if bad:
    raise ValueError(f"--class {bad[0]} is not a class of this run; valid classes: 0 to {num_classes - 1}")
  if len(set(classes)) != len(classes):
    raise ValueError(f"--class repeats a class: {', '.join(map(str, classes))}")
  if num % len(classes):
    raise ValueError(f"--num {num} cannot be shared equally by the {len(classes)} classes asked for; "
                     f"use a multiple of {len(classes)}")
  return np.repeat(np.asarray(classes, np.int32), num // len(classes))


def training_labels(key: jax.Array, num: int, class_probs: Sequence[float]) -> np.ndarray:
  """int32 `[num]` drawn i.i.d. from the training label distribution `class_probs` `[K]`."""
  logits = jnp.log(jnp.asarray(class_probs, jnp.float32))
  return np.asarray(jax.random.categorical(key, logits, shape=(num,)), np.int32)


def sample_labels(classes: Sequence[int] | None, num: int, num_classes: int, seed: int,
                  class_probs: Sequence[float]) -> np.ndarray:
  """`[num]` labels to sample a conditional run with: `classes` as asked (`class_labels`), else drawn
  from the training label distribution `class_probs` with `label_key(seed)`."""
  if classes is not None:
    return class_labels(classes, num, num_classes)
  return training_labels(label_key(seed), num, class_probs)


def w2_per_class(samples: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                 reference_labels: np.ndarray, num_classes: int) -> dict[int, float]:
  """`{k: W2(samples of class k, reference points of class k)}` for every class with points on both sides."""
  out = {}
  for k in range(num_classes):
    a, b = samples[labels == k], reference[reference_labels == k]
    if len(a) and len(b):
      out[k] = float(_w2(jnp.asarray(a), jnp.asarray(b)))
  return out


def mode_accuracy(samples: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> dict:
  """Fraction of samples whose nearest centre (`centres` `[K, d]`) is their own class's, overall and per class.

  Returns `{"value": overall fraction, "per_class": {k: fraction}}`.
  """
  d2 = np.sum((np.asarray(samples)[:, None, :] - np.asarray(centres)[None]) ** 2, axis=-1)
  hit = np.argmin(d2, axis=1) == np.asarray(labels)
  per_class = {int(k): float(hit[labels == k].mean()) for k in np.unique(labels)}
  return {"value": float(hit.mean()), "per_class": per_class}


_LABELS = {"fid": "FID", "w2": "W2", "mode_accuracy": "mode accuracy", "w2_class_mean": "mean per-class W2",
           "nfe": "NFE", "network_passes": "network passes", "grid_nfe": "grid NFE",
           "grid_network_passes": "grid network passes", "grid": "grid", "path_energy": "path energy"}


def write_guidance_sweep(workdir: str, rows: Sequence[dict], columns: Sequence[str], caption: str) -> dict[str, str]:
  """Writes `guidance_sweep.md`, `.csv` and `.png` (each numeric column against the guidance scale), process 0."""
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top  (matplotlib on use)
  stem = os.path.join(workdir, "guidance_sweep")
  out = io.StringIO()
  w = csv.DictWriter(out, ["guidance", *columns], lineterminator="\r\n")
  w.writeheader()
  w.writerows(rows)
  files.write_text(stem + ".csv", out.getvalue())

  def cell(v):
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
  header = ["guidance", *(_LABELS.get(c, c) for c in columns)]
  lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    lines.append("| " + " | ".join([f"{r['guidance']:g}", *(cell(r.get(c)) for c in columns)]) + " |")
  files.write_text(stem + ".md", "\n".join(lines) + "\n")
  numeric = [c for c in columns if all(isinstance(r.get(c), (int, float)) for r in rows)]
  plots.against(stem + ".png", "guidance scale s", [r["guidance"] for r in rows],
                [(_LABELS.get(c, c), [r[c] for r in rows]) for c in numeric], title=caption.split(".")[0])
  return {"md": stem + ".md", "csv": stem + ".csv", "png": stem + ".png"}
