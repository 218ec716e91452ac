"""Image runs: sample grids, batched sampling into `.npz`/PNGs, the training-time grid.

Samples are pushed from x0 ~ N(0, I) to t = 1 with the EMA parameters and mapped
to uint8 by `round((x + 1) * 127.5)` clipped to [0, 255] (`fm.data.images.to_uint8`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from fm import provenance
from fm.data import images as images_lib
from fm.evaluate import sampling
from fm import recipe
from fm.io import files
from fm.train import partitioning

__all__ = ["make_grid", "save_grid", "sample_workdir", "sample_run", "GridEvaluator", "grid_noise_key"]


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


def grid_noise_key(seed: int) -> jax.Array:
  """The fixed noise stream of training-time grids (never used by training)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0x6121D)


def sample_workdir(workdir: str, out: str, solver: str = "dopri5", num: int = 64, seed: int = 0,
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   batch_size: int = 256, png_dir: str | None = None, step: int | None = None,
                   max_steps: int | None = None, progress: bool = True,
                   sde_noise: float | None = None) -> dict[str, Any]:
  """Samples checkpoint `step` (default: the latest) of an image run; see `sample_run`."""
  run, params, step = recipe.load(workdir, step)
  return sample_run(run, params, step, out, solver, num=num, seed=seed, rtol=rtol, atol=atol, steps=steps,
                    batch_size=batch_size, png_dir=png_dir, max_steps=max_steps, progress=progress,
                    sde_noise=sde_noise)


def sample_run(run: recipe.Run, params, step: int, out: str, solver: str = "dopri5", num: int = 64,
               seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
               batch_size: int = 256, png_dir: str | None = None, max_steps: int | None = None,
               progress: bool = True, sde_noise: float | None = None) -> dict[str, Any]:
  """Samples an image run into `out` (.npz) and an 8x8 grid `out.png`; optional one PNG per image.

  The npz holds `samples` uint8 `[num, H, W, C]`, `nfe_total`, `nfe_per_batch`,
  `solver`, `rtol`, `atol`, `steps`, `seed`, `batch_size`, `checkpoint_step`,
  `success` (False if any dopri5 batch hit its step limit), `sde_noise` (-1 unless an SDE solver).
  Sample i starts from the noise of key `fold_in(PRNGKey(seed), i)` (`sampling.sample`).
  """
  from fm import solvers  # pylint: disable=g-import-not-at-top
  from fm.evaluate import toy  # pylint: disable=g-import-not-at-top
  toy.check_sampler(run, solver, "gaussian")   # image runs start from N(0, I)
  sde = solver in solvers.SDE_SOLVERS
  noise = (1.0 if sde_noise is None else float(sde_noise)) if sde else 0.0
  sample_x0 = recipe.x0_sampler(run.config, run.shape)
  samples, info = sampling.sample(
      run.model, params, sample_x0, jax.random.PRNGKey(seed), num, batch_size,
      solver, rtol=rtol, atol=atol, steps=steps, postprocess=images_lib.to_uint8, progress=progress,
      desc=f"sampling ({solver})", max_steps=max_steps, noise=noise, path=run.method.path if sde else None)
  record = {"samples": samples, "nfe_total": info["nfe_total"], "nfe_per_batch": np.asarray(info["nfe_per_batch"]),
            "sde_noise": noise if sde else -1.0,
            "solver": solver, "rtol": rtol, "atol": atol, "steps": -1 if steps is None else steps,
            "seed": seed, "batch_size": info["batch_size"], "checkpoint_step": step, "success": info["success"],
            **provenance.npz_fields()}
  png = os.path.splitext(out)[0] + ".png"
  # every process sampled (its shards) and holds all samples; process 0 writes them
  files.write_npz(out, **record)
  save_grid(png, samples[:64])
  if png_dir and files.is_writer():
    os.makedirs(png_dir, exist_ok=True)
    for i, img in enumerate(samples):
      files.write_png(os.path.join(png_dir, f"{i:06d}.png"), img)
  return {"out": out, "png": png, "step": step, "nfe": info["nfe_total"],
          "nfe_per_batch": info["nfe_per_batch"], "success": info["success"]}


class GridEvaluator:
  """During training: a fixed-noise sample grid (Euler, EMA params) as PNG and to TensorBoard."""

  def __init__(self, run: recipe.Run, sample_x0, workdir: str, num: int = 64, steps: int = 20,
               seed: int = 0):
    self.run, self.workdir, self.steps = run, workdir, steps
    self.x0 = np.asarray(sampling.initial_points(sample_x0, grid_noise_key(seed), 0, num))
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

  def __call__(self, step: int, ema_params, writer=None) -> dict[str, float]:
    leaf = jax.tree_util.tree_leaves(ema_params)[0]
    x0 = self.x0
    if isinstance(leaf.sharding, jax.sharding.NamedSharding):  # shard over the training mesh
      x0 = partitioning.put(x0, partitioning.sharding_for_batch(leaf.sharding.mesh, len(x0)))
    x1, info = sampling.generate(self.run.model, ema_params, x0, "euler", steps=self.steps)
    images = images_lib.to_uint8(partitioning.to_host(x1))
    save_grid(os.path.join(self.workdir, "samples", f"grid_{step:08d}.png"), images)
    if writer is not None:
      writer.image("samples/euler", make_grid(images), step)
    return {"grid_nfe": float(info["nfe"])}
