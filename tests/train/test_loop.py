"""End-to-end training: every method, resume, exactness, NaN stop, compile count."""
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import experiment
from fm import methods
from fm.data import toys
from fm import recipe
from fm.train import checkpoint, loop, step as step_lib
from train.helpers import restore_state, tiny_config, trained_run  # noqa: F401


@pytest.mark.parametrize("method", methods.NAMES)
def test_method_end_to_end(method, smoke_runs):   # smoke_runs: tests/conftest.py (also tests/test_learning.py)
  result, rows, workdir = smoke_runs[method]
  for key in ("w2", "nfe", "w2_euler", "path_energy", "normalized_path_energy"):
    assert np.isfinite(result[key]), key
  assert result["step"] == 300 and result["nfe"] > 0
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["w2"] == result["w2"]
  assert [r["step"] for r in rows] == [100, 200, 300]
  assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in rows)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["method"] == method
  assert checkpoint.all_steps(workdir) == [100, 200, 300]


@pytest.fixture(scope="module")
def run_to_20(tmp_path_factory):
  """A tiny otcfm run trained from scratch to step 20, once; the resume tests below each go on from a copy."""
  workdir = str(tmp_path_factory.mktemp("to20") / "run")
  experiment.train(tiny_config(train__steps=20), workdir)
  return workdir


def _copy(run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run, workdir)
  return workdir


def test_resume_is_bitwise_exact(tmp_path, run_to_20):
  ref, parts = str(tmp_path / "ref"), str(tmp_path / "parts")
  experiment.train(tiny_config(train__steps=60), ref)
  shutil.copytree(run_to_20, parts)   # trained to step 20 from scratch, as tiny_config(train__steps=20)
  experiment.train(tiny_config(train__steps=50), parts)   # ends off the chunk grid
  experiment.train(tiny_config(train__steps=60), parts)
  a, b = restore_state(ref, tiny_config(train__steps=60)), restore_state(parts, tiny_config(train__steps=60))
  assert int(a.step) == int(b.step) == 60
  chex.assert_trees_all_equal(a, b)


def test_config_mismatch_on_resume(tmp_path, run_to_20):
  from fm import config as config_lib
  workdir = _copy(run_to_20, tmp_path)
  with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
    experiment.train(tiny_config(train__steps=20, train__batch_size=64), workdir)


def _history(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_resumable_settings_change_and_are_recorded(tmp_path, run_to_20):
  """lr, clipping, cadence and eval settings may change on resume; each change goes to history.jsonl."""
  workdir = _copy(run_to_20, tmp_path)
  experiment.train(tiny_config(train__steps=40, train__lr=5e-4, train__grad_clip=1.0, train__log_every=10,
                         eval__num_samples=32), workdir)
  events = _history(workdir)
  assert [e["event"] for e in events] == ["start", "resume"] and events[1]["step"] == 20
  assert events[1]["changes"] == {"train.steps": [20, 40], "train.lr": [1e-3, 5e-4], "train.grad_clip": [0.0, 1.0],
                                  "train.log_every": [20, 10], "eval.num_samples": [64, 32]}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["lr"] == 5e-4
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [(r["step"], r["lr"]) for r in rows] == [(20, 1e-3), (30, 5e-4), (40, 5e-4)]


def test_nan_stop_saves_last_good_state_and_a_lower_lr_recovers(tmp_path, monkeypatch, caplog, run_to_20):
  """A run that diverges at a high learning rate (simulated: with lr >= 0.1 an update overflows once a
  parameter leaves [-L, L]) stops at the first non-finite step, saves the state before it, and names
  the settings that let a re-run go on; the re-run with a lower lr is accepted, recorded and finishes."""
  import logging
  import optax
  from fm.train import state as state_lib
  params = recipe.build(tiny_config()).init_state().params
  limit = max(float(jnp.max(jnp.abs(p))) for p in jax.tree_util.tree_leaves(params)) + 0.5
  real = state_lib.make_optimizer

  def fragile(lr, *args, **kwargs):
    opt = real(lr, *args, **kwargs)
    if lr < 0.1:
      return opt

    def update(grads, state, params=None):
      updates, state = opt.update(grads, state, params)
      big = jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree_util.tree_leaves(params)]))
      return jax.tree_util.tree_map(lambda u: u * jnp.where(big > limit, jnp.inf, 1.0), updates), state
    return optax.GradientTransformation(opt.init, update)
  monkeypatch.setattr(state_lib, "make_optimizer", fragile)
  workdir = _copy(run_to_20, tmp_path)   # its lr (1e-3) is below 0.1: the optimizer fragile leaves alone
  with pytest.raises(loop.TrainingError) as e:
    experiment.train(tiny_config(train__steps=60, train__lr=0.3), workdir)
  message = str(e.value)
  saved = checkpoint.latest_step(workdir)
  assert 20 < saved < 60 and f"at step {saved + 1}" in message and f"checkpoint {saved}" in message
  assert "--config.train.lr" in message and "--config.train.grad_clip" in message and "history.jsonl" in message
  assert message.count(". ") == 0 and "\n" not in message   # one sentence
  state = restore_state(workdir, tiny_config(train__steps=60))
  assert int(state.step) == saved and bool(step_lib.finite(state.params))
  assert _history(workdir)[-1] == {**_history(workdir)[-1], "event": "non_finite", "step": saved + 1,
                                   "saved_step": saved}
  # The recovery the message names: a lower learning rate, accepted on resume and recorded.
  with caplog.at_level(logging.INFO, logger="fm"):
    experiment.train(tiny_config(train__steps=60, train__lr=1e-4), workdir)
  assert checkpoint.latest_step(workdir) == 60
  assert f"resuming from step {saved}" in caplog.text
  assert _history(workdir)[-1]["changes"] == {"train.lr": [0.3, 1e-4]}


def test_truncated_metrics_line_survives_resume(tmp_path, run_to_20):
  """A kill mid-write leaves half a line in metrics.jsonl; resume drops it and goes on."""
  workdir = _copy(run_to_20, tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 40, "loss": 0.5, "grad_no')
  experiment.train(tiny_config(train__steps=40), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == [20, 40]


def test_corrupted_latest_checkpoint_falls_back_and_says_so(tmp_path, caplog, trained_run):  # noqa: F811
  """The newest checkpoint unreadable: set aside, resume from the one before, end equal to a clean run."""
  import logging
  import shutil
  ref = str(tmp_path / "ref")
  shutil.copytree(trained_run, ref)   # the clean run: tiny_config() is tiny_config(method="otcfm")
  assert tiny_config() == tiny_config(method="otcfm")
  workdir = str(tmp_path / "run")
  shutil.copytree(ref, workdir)
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "40")):
    for name in files:
      if os.path.basename(root) == "d":
        open(os.path.join(root, name), "w").close()
  with caplog.at_level(logging.INFO, logger="fm"):
    experiment.train(tiny_config(), workdir)
  assert "checkpoint 40 cannot be read" in caplog.text and "resuming from checkpoint 20" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "unreadable_checkpoints", "40"))
  assert checkpoint.all_steps(workdir) == [20, 40]
  chex.assert_trees_all_equal(restore_state(ref, tiny_config()), restore_state(workdir, tiny_config()))
  assert _history(workdir)[-1]["unreadable_checkpoints"] == [40]


def test_finished_run_is_not_retrained_or_reevaluated(tmp_path, caplog):
  import logging
  workdir = str(tmp_path / "run")
  from train.helpers import snapshot
  first = experiment.train_and_evaluate(tiny_config(), workdir)
  before = snapshot(workdir)
  with caplog.at_level(logging.INFO, logger="fm"):
    again = experiment.train_and_evaluate(tiny_config(), workdir)
  assert again == first
  assert {k: v for k, v in snapshot(workdir).items() if k != ".lock"} == {
      k: v for k, v in before.items() if k != ".lock"}   # no file rewritten
  assert "already finished at step 40" in caplog.text and "eval.json is up to date" in caplog.text
  # New eval settings: evaluated again (and the change is recorded).
  third = experiment.train_and_evaluate(tiny_config(eval__num_samples=32), workdir)
  assert third["num_samples"] == 32 and _history(workdir)[-1]["changes"] == {"eval.num_samples": [64, 32]}


def test_multi_step_compiles_once():
  config = tiny_config()
  run = recipe.build(config)

  def loss_fn(params, key, x0, x1):
    return run.method.loss(run.model.apply, params, key, x0, x1)

  fn = chex.assert_max_traces(
      step_lib.make_multi_step(loss_fn, run.optimizer, toys.make_source(16, "gaussian->moons").batch_fn, 0.99),
      n=1)
  jitted = jax.jit(fn, donate_argnums=0)
  state = run.init_state()
  for n in (3, 5, 1, 7):
    before = int(state.step)
    state, stats = jitted(state, np.int32(n), None)
    assert int(stats["count"]) == n and int(state.step) == before + n
  assert jitted._cache_size() == 1  # pylint: disable=protected-access


def test_reflow(tmp_path):
  from fm import config as config_lib
  from fm.train import reflow
  teacher = str(tmp_path / "rf1")
  experiment.train(tiny_config(method="rf", train__steps=20), teacher)
  student = str(tmp_path / "rf2")
  config = tiny_config(method="rf", train__steps=20, reflow__teacher=teacher, reflow__solver="rk4",
                       reflow__steps=8)
  result = experiment.train_and_evaluate(config, student)
  assert np.isfinite(result["w2"])
  with np.load(os.path.join(student, reflow.PAIRS_FILE)) as f:
    assert f["z0"].shape == f["z1"].shape == (256, 2)
    assert int(f["teacher_step"]) == 20 and str(f["teacher"]) == os.path.abspath(teacher)
  assert _history(student)[0]["teacher_step"] == 20
  with pytest.raises(config_lib.ConfigError, match="reflow.teacher"):
    experiment.prepare(tiny_config(method="rf", reflow__teacher=str(tmp_path / "nope")), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")
  # The pairs are stored: the student resumes without its teacher.
  import shutil
  shutil.rmtree(teacher)
  config = tiny_config(method="rf", train__steps=40, reflow__teacher=teacher, reflow__solver="rk4",
                       reflow__steps=8)
  experiment.train(config, student)
  assert checkpoint.latest_step(student) == 40 and _history(student)[-1]["teacher_step"] == 20


def test_unconverged_coupling_is_counted_and_warned(tmp_path, caplog):
  """A Sinkhorn plan cut at max_iterations is counted per log row and warned once per log interval."""
  import logging
  workdir = str(tmp_path / "sb")
  config = tiny_config(method="sbcfm", coupling__max_iterations=1, coupling__threshold=1e-9)
  with caplog.at_level(logging.WARNING, logger="fm"):
    experiment.train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["coupling_unconverged"] for r in rows] == [20, 20]
  assert all(r["converged"] == 0.0 for r in rows)
  warned = [r.getMessage() for r in caplog.records if "did not converge" in r.getMessage()]
  assert len(warned) == 2 and "20 of 20 batches" in warned[0] and "coupling.max_iterations" in warned[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="fm"):   # converged: counted as 0, no warning
    experiment.train(tiny_config(method="sbcfm", train__steps=20), str(tmp_path / "ok"))
  assert not [r for r in caplog.records if "did not converge" in r.getMessage()]


def test_checkpoint_rotated_away_while_read_takes_the_newest(tmp_path, monkeypatch, trained_run):  # noqa: F811
  """`fm sample` / `fm eval` beside a running `fm train`: the latest checkpoint is rotated away (a newer
  one saved, the old one deleted) between listing and reading. `recipe.load` re-lists and reads the
  newest; an explicitly asked step that vanished is one sentence."""
  import shutil  # pylint: disable=g-import-not-at-top
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  ckpts = checkpoint.checkpoint_dir(workdir)
  real = checkpoint.Checkpointer.restore
  calls = []

  def rotating(self, abstract, step=None):
    if not calls:   # fm train saves step 60 and deletes step 40 just now
      os.rename(os.path.join(ckpts, "40"), os.path.join(ckpts, "60"))
    calls.append(step)
    return real(self, abstract, step)
  monkeypatch.setattr(checkpoint.Checkpointer, "restore", rotating)
  _, _, step = recipe.load(workdir)
  assert step == 60 and calls == [40, 60]
  calls.clear()
  os.rename(os.path.join(ckpts, "60"), os.path.join(ckpts, "40"))
  with pytest.raises(config_lib.ConfigError, match="checkpoint 40 .* was removed while it was read"):
    recipe.load(workdir, step=40)


def test_progress_lines_have_precision_and_time_to_go(tmp_path, caplog):
  """Redirected output gets a line per log step: steps/s to three significant digits (not `0 steps/s` on
  a slow CPU) and the time left to train.steps."""
  with caplog.at_level("INFO", logger="fm"):
    experiment.train(tiny_config(method="icfm"), str(tmp_path / "run"))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(lines) == 2 and all("steps/s, about " in line and "to step 40" in line for line in lines), lines
  assert loop._duration(0.4) == "0 s" and loop._duration(600) == "10 min" and loop._duration(4 * 3600) == "4.0 h"
