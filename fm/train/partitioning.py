"""Data parallelism over every device of every process: the mesh, its shardings, who writes.

One 1-D mesh with axis `AXIS` = "data" over `jax.devices()` (all devices of all
processes). The train state, the EMA parameters and any dataset held in memory
are replicated on every device; a training batch `[B, ...]` is sharded along B
(`B` divisible by the device count). The jitted step is written for the global
batch and XLA partitions it: gradients are summed across devices by the
compiler (an all-reduce), random draws use partitionable threefry, so a run on
4 devices computes what a run on 1 device computes up to the order of those
reductions. Couplings see the batch through `fm.couplings` scopes ("global":
gathered and solved once; "local": per device in `shard_map`).

Several processes (`jax.distributed`): every process runs the same program on
the same inputs; only process 0 (`is_writer()`) writes files other than
checkpoints (orbax saves collectively from all processes). `initialize` starts
the distributed runtime from explicit flags or the environment.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fm.io import files

__all__ = ["AXIS", "make_mesh", "replicated", "batch_sharding", "sharding_for_batch", "put", "replicate",
           "abstract_replicated", "init_replicated", "to_host", "jax_process_count", "is_writer", "any_process", "barrier",
           "initialize", "cluster_env_detected"]

AXIS = "data"
log = logging.getLogger("fm")


def make_mesh(devices=None) -> Mesh:
  """The 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def sharding_for_batch(mesh: Mesh, n: int) -> NamedSharding:
  """Batch-sharded if `n` divides over the devices, else replicated (same values, redundant work).

  Padding instead would change results of batch-coupled computations (the
  adaptive solvers' error norm), so an indivisible batch is computed whole.
  """
  return batch_sharding(mesh) if n % mesh.size == 0 else replicated(mesh)


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Host (or local device) arrays, the same on every process -> global arrays with `sharding`."""
  def one(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
  return jax.tree_util.tree_map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host or device arrays -> global arrays replicated on every device of `mesh` (all processes)."""
  return put(tree, replicated(mesh))


def abstract_replicated(abstract: Any, mesh: Mesh) -> Any:
  """`ShapeDtypeStruct`s of `abstract` with the replicated sharding (checkpoint restore targets)."""
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                abstract)


def init_replicated(init_fn, mesh: Mesh) -> Any:
  """`init_fn()` computed directly into replicated global arrays (every process, same values)."""
  return jax.jit(init_fn, out_shardings=replicated(mesh))()


def to_host(x: Any) -> Any:
  """NumPy copy of (a tree of) global arrays, gathered from all processes where needed."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree_util.tree_map(get, x)


def jax_process_count() -> int:
  """`jax.process_count()` (1 in a plain process)."""
  return jax.process_count()


def is_writer() -> bool:
  """True on the one process that writes results files (process 0): `fm.io.files.is_writer`."""
  return files.is_writer()


def any_process(flag: bool) -> bool:
  """`flag` OR-ed over all processes (a collective with several processes; free with one)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.any(flags))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def cluster_env_detected() -> str | None:
  """Name of a multi-process launcher found in the environment (SLURM, Open MPI, TPU pod), or None."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) > 1:
    return "SLURM"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if "," in hosts:
    return "TPU pod"
  return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts `jax.distributed` if asked to or if a multi-process launch is detected; True if started.

  `coordinator="HOST:PORT"` with `num_processes` and `process_id`: explicit.
  `coordinator="auto"`: JAX's own detection (TPU pods, SLURM, Open MPI, k8s).
  None: started only when `cluster_env_detected()` finds a launcher with more
  than one process, so a single-task SLURM job stays a plain process. CPU
  collectives across processes use gloo. Must run before any other JAX call.
  """
  launcher = None
  if coordinator is None:
    launcher = cluster_env_detected()
    if launcher is None:
      return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator not in (None, "auto"):
    jax.distributed.initialize(coordinator, num_processes, process_id)
  else:
    jax.distributed.initialize()
  log.info("jax.distributed: process %d of %d (%s), %d local / %d global devices",
           jax.process_index(), jax.process_count(), launcher or coordinator,
           jax.local_device_count(), jax.device_count())
  return True
