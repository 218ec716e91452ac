"""Toy 2D evaluation of a trained flow: the numbers behind the `w2`, `path_energy` and `nll` metrics.

Metrics (all from the EMA parameters of the latest checkpoint):
  w2                W2(dopri5 samples, held-out target), `num_samples` each
  nfe               dopri5 function evaluations at `rtol`/`atol`
  w2_euler          W2(samples after `euler_steps` Euler steps, held-out target)
  path_energy       kinetic energy of the Euler trajectory, E int |v|^2 dt
  normalized_path_energy  |PE - W2(source, target)^2| / W2(source, target)^2
Source and held-out target samples come from `eval.seed`, on key streams that
training never uses. Samples are integrated sharded over every device (the same
values on any device count, see `fm.evaluate.sampling`); the metrics are then
computed on the host copy, on one local device.

The metrics of the registry (`fm.evaluate.metrics`) call `w2_at` (W2 and NFE at
any solver setting), `path_energy_at` and `nll`: the negative log-likelihood in
nats of the held-out target samples, -mean log p1(y), by the CNF change of
variables (`fm.likelihood`) where the source density is known in closed form
(`fm.data.toys.DENSITIES`). `evaluate` computes the first two in one call.
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fm import likelihood, metrics, provenance, solvers
from fm.data import toys
from fm.evaluate import conditional
from fm.evaluate.sampling import generate
from fm import recipe
from fm.io import files
from fm.train import partitioning

_w2 = jax.jit(metrics.w2)

__all__ = ["generate", "evaluate", "sample_workdir", "eval_keys", "w2_at", "path_energy_at", "nll",
           "nll_unavailable"]


def eval_keys(seed: int):
  """(source key, held-out target key) for evaluation; distinct from training's streams."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0xE7A1)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _sharded(x: jax.Array, params) -> jax.Array:
  """`x` `[n, ...]` placed batch-sharded on the devices that hold `params`."""
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves:   # a parameter-free field (an analytic flow in tests)
    return x
  leaf = leaves[0]
  mesh = leaf.sharding.mesh if isinstance(leaf.sharding, jax.sharding.NamedSharding) else None
  if mesh is None:
    return x
  return partitioning.put(np.asarray(x), partitioning.sharding_for_batch(mesh, x.shape[0]))


def _held_out(model, target: str, key, num: int):
  """Held-out target points `[num, 2]` and, for a conditional model, their labels `[num]` (else None)."""
  if getattr(model, "num_classes", 0):
    y, labels = toys.sample_labelled(target, key, num)
    return np.asarray(y), np.asarray(labels)
  return np.asarray(toys.sample(target, key, num)), None


def _cond(params, labels, guidance: float) -> dict:
  """`generate`'s conditioning arguments: none, or the labels (sharded like the samples) and the scale."""
  if labels is None:
    return {}
  return {"y": _sharded(labels, params), "guidance": float(guidance)}


def class_metrics(model, task: str, x1: np.ndarray, labels: np.ndarray | None, reference: np.ndarray,
                  guidance: float, info: dict) -> dict:
  """A conditional run's extra numbers (empty for an unconditional one): per-class W2, mode accuracy.

  The samples `x1` were generated with the held-out points' own `labels`, so
  class k's samples are compared with class k's held-out points.
  """
  if labels is None:
    return {}
  _, target = toys.parse_task(task)
  per_class = conditional.w2_per_class(x1, labels, reference, labels, model.num_classes)
  out = {"guidance": float(guidance), "network_passes": int(info["network_passes"]),
         "w2_per_class": {str(k): v for k, v in per_class.items()},
         "w2_class_mean": float(np.mean(list(per_class.values())))}
  if target in toys.MODES:
    acc = conditional.mode_accuracy(x1, labels, np.asarray(toys.mode_centres(target)))
    out["mode_accuracy"] = acc["value"]
    out["mode_accuracy_per_class"] = {str(k): v for k, v in acc["per_class"].items()}
  return out


def evaluate(model, params, task: str, num_samples: int = 1000, seed: int = 0,
             rtol: float = 1e-5, atol: float = 1e-5, euler_steps: int = 100,
             guidance: float = 1.0) -> dict[str, float]:
  """The toy metrics above as a flat dict of floats.

  A conditional model samples with the labels of the held-out points (so the
  training label distribution) at scale `guidance`, and adds `class_metrics`.
  """
  source, target = toys.parse_task(task)
  k_src, k_tgt = eval_keys(seed)
  x0 = np.asarray(toys.sample(source, k_src, num_samples))
  y, labels = _held_out(model, target, k_tgt, num_samples)
  cond = _cond(params, labels, guidance)
  x1, info = generate(model, params, _sharded(x0, params), "dopri5", rtol=rtol, atol=atol, **cond)
  x1_euler, info_euler = generate(model, params, _sharded(x0, params), "euler", steps=euler_steps,
                                  save_trajectory=True, **cond)
  x1, x1_euler, info, info_euler = partitioning.to_host((x1, x1_euler, info, info_euler))
  pe = metrics.path_energy(info_euler["trajectory"], info_euler["ts"])
  w2_source = _w2(x0, y)
  return {**class_metrics(model, task, x1, labels, y, guidance, info),
      "w2": float(_w2(x1, y)),
      "nfe": int(info["nfe"]),
      "dopri5_success": bool(info["success"]),
      "w2_euler": float(_w2(x1_euler, y)),
      "path_energy": float(pe),
      "normalized_path_energy": float(metrics.normalized_path_energy(pe, w2_source ** 2)),
      "w2_source_target": float(w2_source),
  }


def _solver_kwargs(solver, rtol, atol, steps):
  if solver in solvers.ADAPTIVE:
    return {"rtol": float(rtol), "atol": float(atol), "steps": None}
  return {"rtol": 1e-5, "atol": 1e-5, "steps": int(steps)}


def w2_at(model, params, task: str, num_samples: int = 1000, seed: int = 0, solver: str = "dopri5",
          rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, guidance: float = 1.0,
          noise: float = 0.0, path=None) -> dict:
  """W2(samples, held-out target) and the NFE of one solver setting (the samples of `evaluate`).

  A conditional run also gets `class_metrics` (per-class W2, mode accuracy) at scale `guidance`.
  SDE solvers (`noise`, the run's `path`) draw sample i's noise from `sampling.noise_keys(k_src, 0, n)[i]`.
  """
  from fm.evaluate import sampling  # pylint: disable=g-import-not-at-top
  source, target = toys.parse_task(task)
  k_src, k_tgt = eval_keys(seed)
  x0 = np.asarray(toys.sample(source, k_src, num_samples))
  y, labels = _held_out(model, target, k_tgt, num_samples)
  sde = {}
  if solver in solvers.SDE_SOLVERS:
    sde = dict(noise=float(noise), path=path, keys=sampling.noise_keys(k_src, 0, num_samples))
  x1, info = generate(model, params, _sharded(x0, params), solver, **_solver_kwargs(solver, rtol, atol, steps),
                      **_cond(params, labels, guidance), **sde)
  x1, info = partitioning.to_host((x1, info))
  return {"value": float(_w2(x1, y)), "nfe": int(info["nfe"]), "num_samples": num_samples,
          "success": bool(info.get("success", True)),
          **class_metrics(model, task, x1, labels, y, guidance, info)}


def path_energy_at(model, params, task: str, num_samples: int = 1000, seed: int = 0,
                   euler_steps: int = 100, guidance: float = 1.0) -> dict:
  """Path energy of the `euler_steps` Euler trajectory, its normalised form and that run's W2."""
  source, target = toys.parse_task(task)
  k_src, k_tgt = eval_keys(seed)
  x0 = np.asarray(toys.sample(source, k_src, num_samples))
  y, labels = _held_out(model, target, k_tgt, num_samples)
  x1, info = generate(model, params, _sharded(x0, params), "euler", steps=euler_steps, save_trajectory=True,
                      **_cond(params, labels, guidance))
  x1, info = partitioning.to_host((x1, info))
  pe = metrics.path_energy(info["trajectory"], info["ts"])
  w2_source = _w2(x0, y)
  return {"value": float(pe), "normalized_path_energy": float(metrics.normalized_path_energy(pe, w2_source ** 2)),
          "w2_source_target": float(w2_source), "w2_euler": float(_w2(x1, y)), "num_samples": num_samples,
          "nfe": int(info["nfe"])}


def nll_unavailable(task: str) -> str | None:
  """None if the task's source density is known; else the sentence saying NLL is skipped."""
  source, _ = toys.parse_task(task)
  if source in toys.DENSITIES:
    return None
  return (f"NLL skipped: the source {source!r} of this run has no closed-form density (known for: "
          f"{', '.join(toys.DENSITIES)}), so log p1 = log p0(x0) - int div v cannot be evaluated.")


@functools.partial(jax.jit, static_argnames=("model", "source", "divergence", "num_probes", "solver", "rtol",
                                             "atol", "steps"))
def _log_prob(model, params, y, key, source, divergence, num_probes, solver, rtol, atol, steps, labels=None):
  v = recipe.velocity(model, params) if labels is None else recipe.velocity(model, params, y=labels)
  logp, info = likelihood.log_prob(v, y, key=key, divergence=divergence, num_probes=num_probes,
                                   solver=solver, rtol=rtol, atol=atol, steps=steps,
                                   log_p0=lambda x: toys.log_prob(source, x))
  return logp, info["nfe"], info["success"]


def nll(model, params, task: str, num_samples: int = 1000, seed: int = 0, solver: str = "dopri5",
        rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, divergence: str = "exact",
        num_probes: int = 1) -> dict:
  """Test NLL (nats) of `num_samples` held-out target samples (the W2 reference points of `evaluate`).

  log p1(y) = log p0(x0) - int_0^1 div v dt, integrated from t = 1 to 0 in one
  batch (dopri5: one shared step size); p0 the source's closed-form density.
  `value` = -mean log p1(y); `nll_sem` its standard error over the samples.
  Hutchinson probes (if chosen) come from `fold_in(target key, 1)`. A
  conditional run's NLL is conditional on each point's true label,
  -mean log p1(y | label), with the conditional field (guidance 1).
  """
  why = nll_unavailable(task)
  if why:
    raise ValueError(why)
  source, target = toys.parse_task(task)
  k_tgt = eval_keys(seed)[1]
  y, labels = _held_out(model, target, k_tgt, num_samples)
  logp, nfe, ok = _log_prob(model, params, y, jax.random.fold_in(k_tgt, 1), source, divergence,
                            int(num_probes), solver, **_solver_kwargs(solver, rtol, atol, steps), labels=labels)
  logp = np.asarray(logp, np.float64)
  return {"value": float(-logp.mean()), "nll_sem": float(logp.std(ddof=1) / math.sqrt(len(logp))),
          "num_samples": num_samples, "nfe": int(nfe), "success": bool(ok), "divergence": divergence,
          "num_probes": None if divergence == "exact" else int(num_probes), "source_density": source}


def check_sampler(run, solver: str, source: str) -> None:
  """ConfigError (one sentence) unless `solver` can sample this run (`fm.heads.check_sampler`)."""
  from fm import heads  # pylint: disable=g-import-not-at-top
  from fm.errors import UserError  # pylint: disable=g-import-not-at-top
  coupling = run.config.coupling.name
  if run.config.get("reflow", {}).get("teacher"):
    coupling = "teacher pairs (reflow)"
  try:
    heads.check_sampler(heads.for_model(run.model), solver, coupling, run.method.path, source)
  except ValueError as e:
    raise UserError(str(e)) from None


def sample_workdir(workdir: str, out: str, solver: str = "dopri5", num: int = 1000, seed: int = 0,
                   rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   step: int | None = None, max_steps: int | None = None, classes=None,
                   guidance: float | None = None, sde_noise: float | None = None, **unused) -> dict:
  """Samples a run into `out` (.npz) and a scatter plot beside it (`out` with .png for .npz).

  The npz holds `samples` `[num, 2]`, `nfe`, `solver`, `rtol`, `atol`, `steps`,
  `seed`, `checkpoint_step`, `max_steps`, `success` (False if dopri5 stopped
  at `max_steps` before t = 1: the samples are then not the flow's output) and
  `provenance_*` (fm version and commit, JAX version, device), and `sde_noise` (-1 for
  non-SDE solvers). SDE noise: sample i draws from `sampling.noise_keys(PRNGKey(seed), 0, num)[i]`.
  A conditional run also records `labels` `[num]`, `guidance` and `network_passes`: the
  labels are `classes` (a list: an equal share of each, see
  `fm.evaluate.conditional.class_labels`) or else drawn from the training label
  distribution; `guidance` defaults to the run's `cond.guidance`.
  """
  from fm.evaluate import plots  # pylint: disable=g-import-not-at-top
  from fm.evaluate import sampling  # pylint: disable=g-import-not-at-top
  del unused
  run, params, step = recipe.load(workdir, step)
  source, target = toys.parse_task(run.config.data.task)
  check_sampler(run, solver, source)
  x0 = np.asarray(toys.sample(source, jax.random.PRNGKey(seed), num))
  labels, extra = None, {}
  if run.model.num_classes:
    guidance = recipe.cond_settings(run.config)[1] if guidance is None else guidance
    labels = conditional.sample_labels(classes, num, run.model.num_classes, seed,
                                       recipe.read_source_info(workdir)["class_probs"])
  sde = solver in solvers.SDE_SOLVERS
  keys = sampling.noise_keys(jax.random.PRNGKey(seed), 0, num) if sde else None
  x1, info = generate(run.model, params, _sharded(x0, params), solver, rtol=rtol, atol=atol, steps=steps,
                      max_steps=max_steps, noise=float(sde_noise if sde_noise is not None else 1.0) if sde else 0.0,
                      path=run.method.path if sde else None, keys=keys, **_cond(params, labels, guidance))
  x1, info = partitioning.to_host((x1, info))
  success = bool(info.get("success", True))
  if labels is not None:
    extra = {"labels": labels, "guidance": float(guidance), "network_passes": int(info["network_passes"]),
             "classes": np.asarray(recipe.read_source_info(workdir)["classes"])}
  record = {"samples": x1, "nfe": int(info["nfe"]), "solver": solver, "rtol": rtol,
            "sde_noise": float(sde_noise) if sde and sde_noise is not None else (1.0 if sde else -1.0),
            "atol": atol, "steps": -1 if steps is None else steps, "seed": seed, "checkpoint_step": step,
            "max_steps": -1 if max_steps is None else max_steps, "success": success,
            **extra, **provenance.npz_fields()}
  png = os.path.splitext(out)[0] + ".png"
  if files.write_npz(out, **record):   # process 0
    reference = np.asarray(toys.sample(target, eval_keys(seed)[1], num))
    title = f"{run.config.method} {run.config.data.task}: {solver}, NFE {record['nfe']}"
    if labels is not None:
      title += f", guidance {float(guidance):g}"
    if not success:
      title += " (NOT INTEGRATED TO t = 1)"
    plots.scatter(png, x1, reference=reference, title=title, labels=labels)
  return {"nfe": record["nfe"], "png": png, "out": out, "step": step, "success": success,
          **{k: extra[k] for k in ("guidance", "network_passes") if k in extra}}


def trajectories(workdir: str, num: int = 256, steps: int = 100, seed: int = 0) -> np.ndarray:
  """Euler trajectories `[steps + 1, num, 2]` of a run, for figures."""
  run, params, _ = recipe.load(workdir)
  source, _ = toys.parse_task(run.config.data.task)
  x0 = np.asarray(toys.sample(source, eval_keys(seed)[0], num))
  _, info = generate(run.model, params, _sharded(x0, params), "euler", steps=steps, save_trajectory=True)
  return partitioning.to_host(info["trajectory"])
