"""Evaluation of trained runs: toy metrics (`toy`), image runs (`images`), sampling, figures.

`evaluate_workdir` and `sample_workdir` dispatch on the kind of the run's data
(`source.json`: "points" for the 2D toys, "images" for image folders / tfds).
"""
from __future__ import annotations

import json
import os

from fm import recipe
from fm.evaluate import plots, sampling, toy
from fm.evaluate.sampling import generate
from fm.evaluate.toy import evaluate, trajectories

__all__ = ["plots", "sampling", "toy", "evaluate", "evaluate_workdir", "generate", "sample_workdir",
           "trajectories", "periodic", "kind", "up_to_date"]


def kind(workdir: str) -> str:
  """"points" or "images": the kind of data a run was trained on."""
  return recipe.read_source_info(workdir)["kind"]


def evaluate_workdir(workdir: str) -> dict:
  """The end-of-training evaluation of a run's latest EMA checkpoint (see `toy`, `images`).

  A result whose dopri5 solve stopped at its step limit is marked: `warnings`
  in `eval.json` says which numbers come from samples not integrated to t = 1.
  eval.json also records the eval settings and `provenance` (fm version and
  commit, JAX version, device).
  """
  if kind(workdir) == "images":
    from fm.evaluate import images  # pylint: disable=g-import-not-at-top
    result = images.evaluate_workdir(workdir)
  else:
    result = toy.evaluate_workdir(workdir)
  from fm import provenance  # pylint: disable=g-import-not-at-top
  result["eval_settings"] = recipe.read_config(workdir).eval.to_dict()
  result["provenance"] = provenance.record()
  warnings = []
  if not result.get("dopri5_success", True):
    warnings.append(f"dopri5 stopped at its step limit before t = 1 (rtol {result.get('rtol')}, atol "
                    f"{result.get('atol')}): the dopri5 numbers (w2, nfe) are of samples that were not "
                    f"integrated to t = 1")
  if warnings:
    result["warnings"] = warnings
  _write_json(os.path.join(workdir, "eval.json"), result)
  return result


def up_to_date(workdir: str, step: int) -> dict | None:
  """eval.json's content if it is of checkpoint `step` with the run's current eval settings, else None."""
  path = os.path.join(workdir, "eval.json")
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  if result.get("step") != step or result.get("eval_settings") != recipe.read_config(workdir).eval.to_dict():
    return None
  return result


def _write_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


def sample_workdir(workdir: str, out: str, **kwargs) -> dict:
  """Samples a run into `out` (.npz) and a figure beside it (scatter plot or image grid)."""
  if kind(workdir) == "images":
    from fm.evaluate import images  # pylint: disable=g-import-not-at-top
    return images.sample_workdir(workdir, out, **kwargs)
  return toy.sample_workdir(workdir, out, **kwargs)


def periodic(run, source, config, workdir):
  """Evaluators run every `eval.every` steps during training: `f(step, ema_params, writer) -> dict`.

  Image runs get a fixed-noise sample grid (`eval.grid_steps` Euler steps); toy
  runs none (their evaluation is cheap enough to run at the end).
  """
  every = config.eval.get("every", 0)
  if not every or source.kind != "images":
    return []
  from fm.evaluate import images  # pylint: disable=g-import-not-at-top
  return [images.GridEvaluator(run, source.sample_x0, workdir, num=config.eval.get("grid_num", 64),
                               steps=config.eval.get("grid_steps", 20), seed=config.eval.get("seed", 0))]
