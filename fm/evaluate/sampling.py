"""Generating samples from a trained flow with any solver, in batches, counting NFE.

`generate` pushes one batch of x0 through the ODE, an SDE (`solvers.SDE_SOLVERS`:
the marginal-preserving SDE of the run, `fm.heads`) or MeanFlow's average-velocity
jumps (`"meanflow"`), jitted with the model static.
`sample` draws `num` samples in batches of `batch_size` with a progress bar:
sample i starts from `x0_i = sample_x0(fold_in(key, i), 1)[0]` (and an SDE draws its
noise from `fold_in(fold_in(key', i), step)`, key' = `fold_in(key, NOISE_STREAM)`), so
the samples do not depend on the batch size or the number of devices (with dopri5 the
step sizes are shared within a batch, so there the batch does matter slightly).
Each batch is sharded over every device of every process (`fm.train.partitioning`;
replicated when `batch_size` does not divide over the devices) and gathered to
every process, so any device count draws the same samples.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fm import guidance as guidance_lib
from fm import heads, solvers
from fm.train import partitioning

__all__ = ["generate", "sample", "batch_size_for", "initial_points", "noise_keys", "NOISE_STREAM"]

NOISE_STREAM = 0x5DE   # fold_in(key, NOISE_STREAM): the SDE noise stream, apart from the x0 stream


@functools.partial(jax.jit, static_argnames=("model", "solver", "steps", "rtol", "atol", "save_trajectory",
                                             "max_steps", "guidance", "noise", "path"))
def generate(model, params, x0, solver="dopri5", rtol=1e-5, atol=1e-5, steps=None,
             save_trajectory=False, max_steps=None, y=None, guidance=1.0, noise=0.0, path=None, keys=None):
  """Pushes `x0` `[n, *shape]` from t = 0 to 1; returns `(x1, info)`.

  `info` has `nfe` (exact evaluations of the field the solver integrates,
  rejected dopri5 steps included), `network_passes`, `steps` and, for dopri5,
  `rejected` and `success` (False if `max_steps` was hit). A conditional model
  takes labels `y` `[n]` and a guidance scale for any solver (`fm.guidance`,
  applied to the network's whole output, `fm.heads.network`: the guided field
  is one batched call, so `network_passes` is `nfe`, or `2 nfe` for s not 0 or 1).
  SDE solvers need `noise` (the diffusion scale), the run's `path` and `keys`
  (one PRNG key per sample, `[n, 2]`); "meanflow" needs a MeanFlow network.
  """
  head = heads.for_model(model)
  extras = {} if y is None else {"y": y}
  guidance = 1.0 if y is None else guidance
  if solver in solvers.SDE_SOLVERS:
    sde = head.sde(model, params, noise, path, guidance, **extras)
    x1, info = solvers.integrate_sde(sde.drift, sde.diffusion, x0, keys, solver, steps=steps,
                                     save_trajectory=save_trajectory)
  elif solver in solvers.MEANFLOW:
    x1, info = solvers.integrate_average(head.average_velocity(model, params, guidance, **extras), x0, steps=steps,
                                         save_trajectory=save_trajectory)
  else:
    if solver in solvers.ADAPTIVE:
      kwargs = {"rtol": rtol, "atol": atol}
      if max_steps is not None:
        kwargs["max_steps"] = max_steps
    else:
      kwargs = {"steps": steps, "save_trajectory": save_trajectory}
    x1, info = solvers.integrate(head.velocity(model, params, guidance, **extras), x0, solver=solver, **kwargs)
  info["network_passes"] = guidance_lib.network_passes(info["nfe"], guidance)
  return x1, info


def initial_points(sample_x0: Callable, key: jax.Array, start: int, count: int) -> jax.Array:
  """`[count, *shape]`: x0 of samples `start .. start + count - 1` (one key per sample)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(count))
  return jax.vmap(lambda k: sample_x0(k, 1)[0])(keys)


def noise_keys(key: jax.Array, start: int, count: int) -> jax.Array:
  """`[count, 2]`: the SDE noise keys of samples `start .. start + count - 1`."""
  stream = jax.random.fold_in(key, NOISE_STREAM)
  return jax.vmap(lambda i: jax.random.fold_in(stream, i))(start + jnp.arange(count))


def batch_size_for(num: int, batch_size: int, devices: int = 1) -> int:
  """The batch that splits `num` samples into `ceil(num / batch_size)` equal batches (the last one padded
  by less than one per batch), rounded up to a multiple of `devices` when `batch_size` is one."""
  batches = -(-num // batch_size)
  size = -(-num // batches)
  if batch_size % devices == 0:
    size = -(-size // devices) * devices
  return min(size, batch_size)


def sample(model, params, sample_x0: Callable, key: jax.Array, num: int, batch_size: int,
           solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
           postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
           progress: bool = True, desc: str = "sampling", mesh=None,
           max_steps: int | None = None, labels: np.ndarray | None = None,
           guidance: float = 1.0, noise: float = 0.0, path=None) -> tuple[np.ndarray, dict]:
  """`num` samples in batches; returns `(samples, info)` with per-batch and total NFE.

  `num` is split into equal batches of at most `batch_size` (`batch_sizes`), so no
  batch integrates samples nobody asked for (`--num 64` integrates 64, not 256)
  and every batch has one shape (one compilation).

  `info`: `nfe_total`, `nfe_per_batch` (list), `network_passes_total`,
  `batch_size`, `success` (every batch reached t = 1 within the solver's step
  limit), `failed_batches`. A conditional model takes `labels` int `[num]`
  (sample i has label `labels[i]`) and a `guidance` scale (`fm.guidance`).
  `postprocess` (e.g. `to_uint8`) is applied per batch on the host. `mesh`:
  the devices to shard batches over (default: all of them, all processes).
  `noise`, `path`: an SDE solver's diffusion scale and the run's path (`generate`).
  """
  mesh = partitioning.make_mesh() if mesh is None else mesh
  batch_size = batch_size_for(num, batch_size, mesh.size)
  init = jax.jit(functools.partial(initial_points, sample_x0), static_argnums=(2,),
                 out_shardings=partitioning.sharding_for_batch(mesh, batch_size))
  key = np.asarray(key)
  out, nfe, passes, failed = [], [], [], []
  if labels is not None:
    labels = np.asarray(labels, np.int32)
    if labels.shape != (num,):
      raise ValueError(f"labels must be [num] = [{num}], got shape {labels.shape}")
    padded = np.concatenate([labels, np.zeros(-num % batch_size, np.int32)])   # equal batches, the last padded
    label_sharding = partitioning.sharding_for_batch(mesh, batch_size)
  with tqdm.tqdm(total=num, desc=desc, unit="sample",
                 disable=not (progress and partitioning.is_writer()) or None,
                 dynamic_ncols=True) as bar:
    for start in range(0, num, batch_size):
      count = min(batch_size, num - start)
      x0 = init(key, start, batch_size)  # equal batches: one compilation
      keys = noise_keys(key, start, batch_size) if solver in solvers.SDE_SOLVERS else None
      extra = {}
      if labels is not None:
        extra = {"y": partitioning.put(padded[start:start + batch_size], label_sharding), "guidance": guidance}
      x1, info = generate(model, params, x0, solver, rtol=rtol, atol=atol, steps=steps, max_steps=max_steps,
                          noise=noise, path=path, keys=keys, **extra)
      x1 = partitioning.to_host(x1)[:count]
      out.append(postprocess(x1) if postprocess else x1)
      nfe.append(int(info["nfe"]))
      passes.append(int(info["network_passes"]))
      if not bool(info.get("success", True)):
        failed.append(start // batch_size)
      bar.update(count)
      bar.set_postfix(nfe=nfe[-1], refresh=False)
  return np.concatenate(out), {"nfe_total": int(sum(nfe)), "nfe_per_batch": nfe,
                               "network_passes_total": int(sum(passes)),
                               "batch_size": batch_size, "success": not failed,
                               "failed_batches": failed}
