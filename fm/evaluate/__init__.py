"""Evaluation of trained runs: a metric registry, one driver, sampling and figures.

  registry      the metrics (`fm/evaluate/metrics/`, one class each) and which run kinds they serve
  runner        `fm eval`, NFE sweeps and the end-of-training evaluation (eval.jsonl, eval.json)
  toy, images, image_metrics, fid, reference   the computations the metrics wrap
  sampling, plots                              integrating samples; figures

`evaluate_workdir` and `sample_workdir` dispatch on the kind of the run's data
(`source.json`: "points" for the 2D toys, "images" for image folders / tfds).
"""
from __future__ import annotations

from fm import recipe
from fm.evaluate import plots, sampling, toy
from fm.evaluate.sampling import generate
from fm.evaluate.toy import evaluate, trajectories

__all__ = ["plots", "sampling", "toy", "evaluate", "evaluate_workdir", "generate", "sample_workdir",
           "trajectories", "periodic", "kind", "up_to_date"]


def kind(workdir: str) -> str:
  """"points" or "images": the kind of data a run was trained on."""
  return recipe.read_source_info(workdir)["kind"]


def evaluate_workdir(workdir: str, loaded: tuple | None = None) -> dict:
  """The end-of-training evaluation of a run's latest EMA checkpoint (`runner.evaluate_at_end`).

  Computes `config.eval.metrics` at the run's eval settings, appends each record
  to `eval.jsonl` and writes `eval.json`, the flat view of them. A result whose
  dopri5 solve stopped at its step limit is marked: `warnings` says which.
  """
  from fm.evaluate import runner  # pylint: disable=g-import-not-at-top
  return runner.evaluate_at_end(workdir, loaded)


def up_to_date(workdir: str, step: int) -> dict | None:
  """eval.json's content if it is of checkpoint `step` with the run's current eval settings, else None."""
  from fm.evaluate import runner  # pylint: disable=g-import-not-at-top
  return runner.up_to_date(workdir, step)


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
                               steps=config.eval.get("grid_steps", 20), seed=config.eval.get("seed", 0),
                               class_names=source.classes)]
