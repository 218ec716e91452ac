"""Toy 2D evaluation of a trained flow, written to `workdir/eval.json`.

Metrics (all from the EMA parameters of the latest checkpoint):
  w2                W2(dopri5 samples, held-out target), `num_samples` each
  nfe               dopri5 function evaluations at `rtol`/`atol`
  w2_euler          W2(samples after `euler_steps` Euler steps, held-out target)
  path_energy       kinetic energy of the Euler trajectory, E int |v|^2 dt
  normalized_path_energy  |PE - W2(source, target)^2| / W2(source, target)^2
Source and held-out target samples come from `eval.seed`, on key streams that
training never uses.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from fm import metrics, provenance
from fm.data import toys
from fm.evaluate.sampling import generate
from fm.train import run as run_lib

_w2 = jax.jit(metrics.w2)  # jitted: also runs on inputs committed to a multi-device mesh

__all__ = ["generate", "evaluate", "evaluate_workdir", "sample_workdir", "eval_keys"]


def eval_keys(seed: int):
  """(source key, held-out target key) for evaluation; distinct from training's streams."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0xE7A1)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def evaluate(model, params, task: str, num_samples: int = 1000, seed: int = 0,
             rtol: float = 1e-5, atol: float = 1e-5, euler_steps: int = 100) -> dict[str, float]:
  """The toy metrics above as a flat dict of floats."""
  source, target = toys.parse_task(task)
  k_src, k_tgt = eval_keys(seed)
  x0 = toys.sample(source, k_src, num_samples)
  y = toys.sample(target, k_tgt, num_samples)
  x1, info = generate(model, params, x0, "dopri5", rtol=rtol, atol=atol)
  x1_euler, info_euler = generate(model, params, x0, "euler", steps=euler_steps, save_trajectory=True)
  pe = metrics.path_energy(info_euler["trajectory"], info_euler["ts"])
  w2_source = _w2(x0, y)
  return {
      "w2": float(_w2(x1, y)),
      "nfe": int(info["nfe"]),
      "dopri5_success": bool(info["success"]),
      "w2_euler": float(_w2(x1_euler, y)),
      "path_energy": float(pe),
      "normalized_path_energy": float(metrics.normalized_path_energy(pe, w2_source ** 2)),
      "w2_source_target": float(w2_source),
  }


def evaluate_workdir(workdir: str) -> dict:
  """Evaluates the latest checkpoint of a run; writes and returns `eval.json`'s content."""
  run, params, step = run_lib.load(workdir)
  ec = run.config.eval
  result = {"step": step, "method": run.config.method, "task": run.config.data.task,
            "seed": run.config.seed, "num_samples": ec.num_samples, "rtol": ec.rtol, "atol": ec.atol,
            "euler_steps": ec.euler_steps}
  result.update(evaluate(run.model, params, run.config.data.task, ec.num_samples, ec.seed,
                         ec.rtol, ec.atol, ec.euler_steps))
  path = os.path.join(workdir, "eval.json")
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)
  return result


def sample_workdir(workdir: str, out: str, solver: str = "dopri5", num: int = 1000, seed: int = 0,
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   step: int | None = None, max_steps: int | None = None, **unused) -> dict:
  """Samples a run into `out` (.npz) and a scatter plot beside it (`out` with .png for .npz).

  The npz holds `samples` `[num, 2]`, `nfe`, `solver`, `rtol`, `atol`, `steps`,
  `seed`, `checkpoint_step`, `max_steps`, `success` (False if dopri5 stopped
  at `max_steps` before t = 1: the samples are then not the flow's output) and
  `provenance_*` (fm version and commit, JAX version, device).
  """
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  del unused
  run, params, step = run_lib.load(workdir, step)
  source, target = toys.parse_task(run.config.data.task)
  x0 = toys.sample(source, jax.random.PRNGKey(seed), num)
  x1, info = generate(run.model, params, x0, solver, rtol=rtol, atol=atol, steps=steps, max_steps=max_steps)
  success = bool(info["success"])
  record = {"samples": np.asarray(x1), "nfe": int(info["nfe"]), "solver": solver, "rtol": rtol,
            "atol": atol, "steps": -1 if steps is None else steps, "seed": seed, "checkpoint_step": step,
            "max_steps": -1 if max_steps is None else max_steps, "success": success,
            **provenance.npz_fields()}
  tmp = out + ".tmp.npz"
  np.savez(tmp, **record)
  os.replace(tmp, out)
  reference = np.asarray(toys.sample(target, eval_keys(seed)[1], num))
  png = os.path.splitext(out)[0] + ".png"
  title = f"{run.config.method} {run.config.data.task}: {solver}, NFE {record['nfe']}"
  if not success:
    title += " (NOT INTEGRATED TO t = 1)"
  plots.scatter(png, np.asarray(x1), reference=reference, title=title)
  return {"nfe": record["nfe"], "png": png, "out": out, "step": step, "success": success}


def trajectories(workdir: str, num: int = 256, steps: int = 100, seed: int = 0) -> np.ndarray:
  """Euler trajectories `[steps + 1, num, 2]` of a run, for figures."""
  run, params, _ = run_lib.load(workdir)
  source, _ = toys.parse_task(run.config.data.task)
  x0 = toys.sample(source, eval_keys(seed)[0], num)
  _, info = generate(run.model, params, x0, "euler", steps=steps, save_trajectory=True)
  return np.asarray(info["trajectory"])
