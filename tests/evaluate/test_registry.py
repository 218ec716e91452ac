"""The metric registry: the table, eval.json as a view of the end-of-training records, adding a metric."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from fm import cli, recipe
from fm.data import toys
from fm.evaluate import records, registry, runner, sampling, toy
from fm.evaluate.metric import Metric
from train.helpers import CONFIG, trained_run  # noqa: F401


def test_table():
  assert registry.names("points") == ("w2", "path_energy", "nll")
  assert registry.names("images") == ("fid", "bpd", "grid")
  assert registry.names("points", sweep=True) == ("w2", "nll")
  assert registry.defaults("images") == ("fid", "bpd") and registry.defaults("images", sweep=True) == ("fid",)
  for name, cls in registry.METRICS.items():
    assert cls.name == name and set(cls.kinds) <= set(registry.KINDS) and cls.needs
  with pytest.raises(ValueError, match="eval.metrics: metric 'fid' is not available for a toy run; choose from: "
                                       "w2, path_energy, nll"):
    registry.at_end("points", "w2,fid")
  assert registry.at_end("points", None) == ("w2", "path_energy")
  assert registry.at_end("images", "") == ("grid",)


def test_eval_json_is_the_view_of_the_end_of_training_records(trained_run):  # noqa: F811
  with open(os.path.join(trained_run, "eval.json")) as f:
    view = json.load(f)
  ends = [r for r in records.read(trained_run) if r.get("origin") == "end of training"]
  w2, pe = ends[-2], ends[-1]
  assert (w2["metric"], pe["metric"]) == ("w2", "path_energy") and view["records"] == {"w2": w2, "path_energy": pe}
  assert view["w2"] == w2["value"] and view["nfe"] == w2["nfe"] and view["dopri5_success"] == w2["success"]
  assert view["path_energy"] == pe["value"] and view["w2_euler"] == pe["w2_euler"]
  assert pe["solver"] == "euler" and pe["steps"] == view["euler_steps"] and w2["rtol"] == view["rtol"]
  # The same numbers as the one-call toy evaluation of earlier fm versions' eval.json.
  run, params, _ = recipe.load(trained_run)
  ec = run.config.eval
  old = toy.evaluate(run.model, params, run.config.data.task, ec.num_samples, ec.seed, ec.rtol, ec.atol,
                     ec.euler_steps)
  for key in ("w2", "nfe", "w2_euler", "path_energy", "normalized_path_energy", "w2_source_target"):
    assert view[key] == pytest.approx(old[key], rel=1e-6), key
  assert runner.up_to_date(trained_run, view["step"]) == view


def test_old_eval_json_stays_readable(tmp_path):
  old = {"step": 40, "method": "otcfm", "w2": 0.5, "nfe": 62, "eval_settings": {"seed": 0}}
  (tmp_path / "eval.json").write_text(json.dumps(old))
  assert runner.read_view(str(tmp_path)) == old
  (tmp_path / "eval.json").write_text('{"step": 4')   # cut off
  assert runner.read_view(str(tmp_path)) is None


def test_bad_eval_metrics_refused_before_any_work(tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["train", "--config", CONFIG + ":smoke", "--workdir", str(workdir), "--config.eval.metrics=w2,fid"])
  err = capsys.readouterr().err
  assert code == 2 and "'fid' is not available for a toy run; choose from: w2, path_energy, nll" in err
  assert err.count("\n") == 1 and not workdir.exists()


class Nearest(Metric):
  """docs/evaluation.md's example: mean distance of generated samples to the nearest held-out target."""
  name = "nearest"
  kinds = ("points",)
  needs = "generated samples and held-out target samples"

  def compute(self, ctx, solver, rtol, atol, steps):
    source, target = toys.parse_task(ctx.run.config.data.task)
    k_src, k_tgt = toy.eval_keys(ctx.seed)
    n = ctx.num(self)
    x1, info = sampling.generate(ctx.run.model, ctx.params, toys.sample(source, k_src, n), solver,
                                 rtol=rtol, atol=atol, steps=steps)
    y = np.asarray(toys.sample(target, k_tgt, n))
    d = np.linalg.norm(np.asarray(x1)[:, None] - y[None], axis=-1).min(axis=1)
    return {"value": float(d.mean()), "nfe": int(info["nfe"]), "num_samples": n}


def test_adding_a_metric_is_one_class_and_one_registry_entry(trained_run, tmp_path, monkeypatch, capsys):  # noqa: F811
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  monkeypatch.setitem(registry.METRICS, "nearest", Nearest)
  n = len(records.read(workdir))
  code = cli.main(["eval", "--workdir", workdir, "--metrics", "nearest", "--solver", "euler", "--steps", "4",
                   "--num", "16", "--seed", "3"])
  assert code == 0, capsys.readouterr().err
  (rec,) = records.read(workdir)[n:]
  # By hand: Euler with 4 steps of the same flow from the same source points.
  run, params, step = recipe.load(workdir)
  source, target = toys.parse_task(run.config.data.task)
  k_src, k_tgt = toy.eval_keys(3)
  x = np.asarray(toys.sample(source, k_src, 16), np.float64)
  v = recipe.velocity(run.model, params)
  for i in range(4):
    x = x + 0.25 * np.asarray(v(i * 0.25, x.astype(np.float32)), np.float64)
  y = np.asarray(toys.sample(target, k_tgt, 16), np.float64)
  want = np.linalg.norm(x[:, None] - y[None], axis=-1).min(axis=1).mean()
  assert rec["value"] == pytest.approx(want, rel=1e-4)
  assert {k: rec[k] for k in ("metric", "step", "seed", "solver", "steps", "nfe", "num_samples")} == {
      "metric": "nearest", "step": step, "seed": 3, "solver": "euler", "steps": 4, "nfe": 4, "num_samples": 16}
  assert "fm_commit" in rec and "time" in rec
  code = cli.main(["eval", "--workdir", workdir, "--nfe-sweep", "euler:1,2", "--metrics", "nearest"])
  assert code == 0 and os.path.exists(os.path.join(workdir, "nfe_sweep_euler.csv"))


class Unavailable(Nearest):
  name = "unavailable"

  def prepare(self, ctx):
    return "unavailable skipped: this run has no such thing."


def test_nothing_computable_exits_2(trained_run, monkeypatch, capsys):  # noqa: F811
  monkeypatch.setitem(registry.METRICS, "unavailable", Unavailable)
  n = len(records.read(trained_run))
  code = cli.main(["eval", "--workdir", trained_run, "--metrics", "unavailable"])
  err = capsys.readouterr().err
  assert code == 2 and "nothing to evaluate: unavailable skipped: this run has no such thing." in err
  assert len(records.read(trained_run)) == n
