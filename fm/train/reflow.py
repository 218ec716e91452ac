"""Reflow (2-rectified flow, Liu et al. 2023): train `rf` on teacher ODE pairs.

Design: the `reflow.num_pairs` pairs `(z0, z1 = ODE_teacher(z0))` are generated
ONCE, before training, with the teacher's EMA parameters and `reflow.solver`
(dopri5 at `reflow.rtol/atol` by default, or a fixed-step solver with
`reflow.steps`), and stored in `workdir/reflow_pairs.npz` (written atomically).
The train step then draws minibatch indices from `fold_in(key, step)` inside the
jitted step, so training stays deterministic and a resumed run reuses the same
pairs. z0 comes from the data source's x0 distribution under the student's seed.
The pairs file also records the teacher's workdir and checkpoint step; once it
exists the student resumes without the teacher.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from fm import provenance, solvers
from fm import config as config_lib
from fm.io import files
from fm.train import partitioning
from fm.train import workdir as workdir_lib

__all__ = ["PAIRS_FILE", "check_teacher", "make_pairs", "load_or_make_pairs", "has_pairs"]

PAIRS_FILE = "reflow_pairs.npz"
_CHUNK_POINTS = 10_000  # teacher samples per solver call for low-dimensional data (bounds memory)
_CHUNK_IMAGES = 256     # ... and for images (network activations dominate)


def check_teacher(teacher: str, data) -> None:
  """ConfigError unless `teacher` is a finished rectified-flow (`rf`) run on the same data (`config.data`)."""
  try:
    step = workdir_lib.check_run(teacher)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"bad value {teacher!r} for config key 'reflow.teacher': {e}") from e
  teacher_config = workdir_lib.read_config(teacher)
  if teacher_config.method != "rf":
    raise config_lib.ConfigError(
        f"reflow teacher {teacher!r} is a {teacher_config.method!r} run, not a rectified flow; reflow "
        f"straightens a method='rf' run")
  if step < teacher_config.train.steps:
    raise config_lib.ConfigError(
        f"reflow teacher {teacher!r} is unfinished (latest checkpoint at step {step} of train.steps="
        f"{teacher_config.train.steps}); finish it first with fm train --workdir {teacher}")
  teacher_data = config_lib.to_dict(teacher_config.data)
  changed = config_lib.diff(teacher_data, config_lib.to_dict(data))
  if changed:
    k = changed[0]
    raise config_lib.ConfigError(
        f"reflow teacher {teacher!r} was trained with data.{k}={config_lib.flatten(teacher_data).get(k)!r} "
        f"but this run has data.{k}={config_lib.flatten(config_lib.to_dict(data)).get(k)!r}; they must match")


def has_pairs(workdir: str) -> bool:
  """True once the student's pairs are stored (the teacher is no longer needed)."""
  return os.path.isfile(os.path.join(workdir, PAIRS_FILE))


def make_pairs(teacher: str, sample_x0, num_pairs: int, key: jax.Array, load_teacher, solver: str = "dopri5",
               rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100) -> dict[str, np.ndarray]:
  """`{"z0": [N, *shape], "z1": [N, *shape], "nfe": [chunks], "teacher", "teacher_step"}` from the
  teacher's latest EMA checkpoint; `load_teacher(workdir) -> (run, ema_params, step)` (`fm.recipe.load`)."""
  run, params, teacher_step = load_teacher(teacher)
  kwargs = {"rtol": rtol, "atol": atol} if solver in solvers.ADAPTIVE else {"steps": steps}

  @jax.jit
  def push(params, z0):
    z1, info = solvers.integrate(run.velocity(params), z0, solver=solver, **kwargs)
    return z1, info["nfe"]

  z0 = np.asarray(sample_x0(key, num_pairs))
  chunk = _CHUNK_POINTS if int(np.prod(run.shape)) <= 16 else _CHUNK_IMAGES
  mesh = jax.tree_util.tree_leaves(params)[0].sharding.mesh  # chunks sharded over it
  z1, nfe = [], []
  for i in range(0, num_pairs, chunk):
    part = z0[i:i + chunk]
    out, n = push(params, partitioning.put(part, partitioning.sharding_for_batch(mesh, len(part))))
    z1.append(partitioning.to_host(out))
    nfe.append(int(n))
  return {"z0": np.asarray(z0), "z1": np.concatenate(z1), "nfe": np.asarray(nfe),
          "teacher": np.asarray(os.path.abspath(teacher)), "teacher_step": np.asarray(teacher_step),
          **provenance.npz_fields()}


def load_or_make_pairs(workdir: str, teacher: str, sample_x0, num_pairs: int, seed: int, load_teacher,
                       **solver_kwargs) -> dict[str, jax.Array]:
  """Loads `workdir/reflow_pairs.npz`, or generates and stores it first (the teacher is only read then).

  Returns `{"z0", "z1"}` on device and `teacher_step` (an int; None for files
  written before it was recorded).
  """
  path = os.path.join(workdir, PAIRS_FILE)
  if not os.path.exists(path):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EF10)
    pairs = make_pairs(teacher, sample_x0, num_pairs, key, load_teacher, **solver_kwargs)
    if not files.write_npz(path, **pairs):  # every process made the same pairs; process 0 stores them
      return {"z0": jnp.asarray(pairs["z0"]), "z1": jnp.asarray(pairs["z1"])}
  with np.load(path) as f:
    teacher_step = int(f["teacher_step"]) if "teacher_step" in f else None
    return {"z0": jnp.asarray(f["z0"]), "z1": jnp.asarray(f["z1"]), "teacher_step": teacher_step}
