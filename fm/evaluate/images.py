"""Image runs: sample grids, batched sampling into `.npz`/PNGs, the training-time grid.

Samples are pushed from x0 ~ N(0, I) to t = 1 with the EMA parameters and mapped
to uint8 by `round((x + 1) * 127.5)` clipped to [0, 255] (`fm.data.images.to_uint8`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from fm import provenance
from fm.data import images as images_lib
from fm.evaluate import conditional, sampling
from fm import recipe
from fm.io import files
from fm.train import partitioning

__all__ = ["make_grid", "save_grid", "save_class_grid", "sample_workdir", "sample_run", "GridEvaluator",
           "grid_noise_key"]


def make_grid(images: np.ndarray, cols: int = 8, pad: int = 2, fill: int = 255) -> np.ndarray:
  """`[n, H, W, C]` uint8 -> one `[rows (H + pad) + pad, cols (W + pad) + pad, C]` uint8 mosaic."""
  n, h, w, c = images.shape
  rows = -(-n // cols)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
  return out


def save_grid(path: str, images: np.ndarray, cols: int = 8, scale: int = 2) -> None:
  """Writes a grid of uint8 images `[n, H, W, C]` as a PNG (nearest-neighbour upscaled by `scale`), process 0 only."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = make_grid(images, cols)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  files.write_png(path, img)   # process 0 only


def save_class_grid(path: str, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    per_row: int = 10, scale: int = 2) -> None:
  """PNG: one row per class present in `labels` (in order of first appearance), its name on the left.

  `images` uint8 `[n, H, W, C]`, `labels` `[n]`; each row shows up to `per_row`
  images of its class. Written by process 0 only.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  order = list(dict.fromkeys(int(k) for k in labels))
  _, h, w, c = images.shape
  block = np.full((len(order) * per_row, h, w, c), 255, np.uint8)
  for r, k in enumerate(order):
    imgs = images[labels == k][:per_row]
    block[r * per_row:r * per_row + len(imgs)] = imgs
  grid = make_grid(block, cols=per_row)
  if grid.shape[-1] == 1:
    grid = np.repeat(grid, 3, axis=-1)
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  names = [f"{k}: {class_names[k]}" if k < len(class_names) else str(k) for k in order]
  margin = 8 + 6 * max(len(s) for s in names)
  canvas = Image.new("RGB", (img.width + margin, img.height), "white")
  canvas.paste(img, (margin, 0))
  draw = ImageDraw.Draw(canvas)
  for r, name in enumerate(names):
    draw.text((4, 2 * scale + r * (h + 2) * scale + (h * scale) // 2 - 5), name, fill="black")
  files.write_png(path, canvas)   # process 0 only


def grid_noise_key(seed: int) -> jax.Array:
  """The fixed noise stream of training-time grids (never used by training)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0x6121D)


def sample_workdir(workdir: str, out: str, solver: str = "dopri5", num: int = 64, seed: int = 0,
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   batch_size: int = 256, png_dir: str | None = None, step: int | None = None,
                   max_steps: int | None = None, progress: bool = True, classes=None,
                   guidance: float | None = None, sde_noise: float | None = None) -> dict[str, Any]:
  """Samples checkpoint `step` (default: the latest) of an image run; see `sample_run`."""
  run, params, step = recipe.load(workdir, step)
  return sample_run(run, params, step, out, solver, num=num, seed=seed, rtol=rtol, atol=atol, steps=steps,
                    batch_size=batch_size, png_dir=png_dir, max_steps=max_steps, progress=progress,
                    classes=classes, guidance=guidance, source_info=recipe.read_source_info(workdir),
                    sde_noise=sde_noise)


def sample_run(run: recipe.Run, params, step: int, out: str, solver: str = "dopri5", num: int = 64,
               seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
               batch_size: int = 256, png_dir: str | None = None, max_steps: int | None = None,
               progress: bool = True, classes=None, guidance: float | None = None,
               source_info: dict | None = None, sde_noise: float | None = None) -> dict[str, Any]:
  """Samples an image run into `out` (.npz) and an 8x8 grid `out.png`; optional one PNG per image.

  The npz holds `samples` uint8 `[num, H, W, C]`, `nfe_total`, `nfe_per_batch`,
  `solver`, `rtol`, `atol`, `steps`, `seed`, `batch_size`, `checkpoint_step`,
  `success` (False if any dopri5 batch hit its step limit), `sde_noise` (-1 unless an SDE solver).
  Sample i starts from the noise of key `fold_in(PRNGKey(seed), i)` (`sampling.sample`).

  A conditional run (its `source_info`: the workdir's source.json) also records
  `labels` `[num]`, `classes` (names), `guidance` and `network_passes_total`:
  the labels are `classes` (a list: an equal share of each, and the grid has
  one labelled row per class) or else drawn from the training label
  distribution; `guidance` defaults to the run's `cond.guidance`.
  """
  from fm import solvers  # pylint: disable=g-import-not-at-top
  from fm.evaluate import toy  # pylint: disable=g-import-not-at-top
  toy.check_sampler(run, solver, "gaussian")   # image runs start from N(0, I)
  sde = solver in solvers.SDE_SOLVERS
  noise = (1.0 if sde_noise is None else float(sde_noise)) if sde else 0.0
  sample_x0 = recipe.x0_sampler(run.config, run.shape)
  labels, extra = None, {}
  if run.model.num_classes:
    guidance = recipe.cond_settings(run.config)[1] if guidance is None else guidance
    labels = conditional.sample_labels(classes, num, run.model.num_classes, seed, source_info["class_probs"])
    extra = {"labels": labels, "classes": np.asarray(source_info["classes"]), "guidance": float(guidance)}
  samples, info = sampling.sample(
      run.model, params, sample_x0, jax.random.PRNGKey(seed), num, batch_size,
      solver, rtol=rtol, atol=atol, steps=steps, postprocess=images_lib.to_uint8, progress=progress,
      desc=f"sampling ({solver})", max_steps=max_steps, labels=labels,
      guidance=1.0 if guidance is None else guidance, noise=noise, path=run.method.path if sde else None)
  if labels is not None:
    extra["network_passes_total"] = info["network_passes_total"]
  record = {"samples": samples, "nfe_total": info["nfe_total"], "nfe_per_batch": np.asarray(info["nfe_per_batch"]),
            "sde_noise": noise if sde else -1.0,
            "solver": solver, "rtol": rtol, "atol": atol, "steps": -1 if steps is None else steps,
            "seed": seed, "batch_size": info["batch_size"], "checkpoint_step": step, "success": info["success"],
            **extra, **provenance.npz_fields()}
  png = os.path.splitext(out)[0] + ".png"
  # every process sampled (its shards) and holds all samples; process 0 writes them
  files.write_npz(out, **record)
  if labels is not None and classes is not None:   # one labelled row per class
    save_class_grid(png, samples, labels, [str(c) for c in extra["classes"]], per_row=min(10, num // len(classes)))
  else:
    save_grid(png, samples[:64])
  if png_dir and files.is_writer():
    os.makedirs(png_dir, exist_ok=True)
    for i, img in enumerate(samples):
      files.write_png(os.path.join(png_dir, f"{i:06d}.png"), img)
  out_info = {"out": out, "png": png, "step": step, "nfe": info["nfe_total"],
              "nfe_per_batch": info["nfe_per_batch"], "success": info["success"]}
  if labels is not None:
    out_info.update(guidance=extra["guidance"], network_passes=extra["network_passes_total"])
  return out_info


class GridEvaluator:
  """During training: a fixed-noise sample grid (Euler, EMA params) as PNG and to TensorBoard."""

  def __init__(self, run: recipe.Run, sample_x0, workdir: str, num: int = 64, steps: int = 20,
               seed: int = 0, class_names=None):
    self.run, self.workdir, self.steps = run, workdir, steps
    self.labels, self.class_names = None, class_names
    k = run.model.num_classes
    if k:   # a conditional run: one row per class, num // k columns (at least one), at the run's guidance
      cols = max(1, num // k)
      num = k * cols
      self.labels = np.repeat(np.arange(k, dtype=np.int32), cols)
      self.guidance, self.cols = recipe.cond_settings(run.config)[1], cols
    self.x0 = np.asarray(sampling.initial_points(sample_x0, grid_noise_key(seed), 0, num))
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

  def __call__(self, step: int, ema_params, writer=None) -> dict[str, float]:
    leaf = jax.tree_util.tree_leaves(ema_params)[0]
    x0, extra = self.x0, {}
    if self.labels is not None:
      extra = {"y": self.labels, "guidance": self.guidance}
    if isinstance(leaf.sharding, jax.sharding.NamedSharding):  # shard over the training mesh
      sharding = partitioning.sharding_for_batch(leaf.sharding.mesh, len(x0))
      x0 = partitioning.put(x0, sharding)
      if extra:
        extra["y"] = partitioning.put(self.labels, sharding)
    x1, info = sampling.generate(self.run.model, ema_params, x0, "euler", steps=self.steps, **extra)
    images = images_lib.to_uint8(partitioning.to_host(x1))
    path = os.path.join(self.workdir, "samples", f"grid_{step:08d}.png")
    if self.labels is not None:
      names = self.class_names or [str(k) for k in range(self.run.model.num_classes)]
      save_class_grid(path, images, self.labels, names, per_row=self.cols)
    else:
      save_grid(path, images)
    if writer is not None:
      writer.image("samples/euler", make_grid(images, cols=self.cols if self.labels is not None else 8), step)
    return {"grid_nfe": float(info["nfe"])}
