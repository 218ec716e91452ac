"""End-to-end training: every method, resume, exactness, NaN stop, compile count."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import methods
from fm.data import toys
from fm.train import checkpoint, loop, run as run_lib, step as step_lib
from train.helpers import restore_state, tiny_config


@pytest.mark.parametrize("method", methods.NAMES)
def test_method_end_to_end(method, tmp_path):
  workdir = str(tmp_path / method)
  result = loop.train_and_evaluate(tiny_config(method=method), workdir)
  for key in ("w2", "nfe", "w2_euler", "path_energy", "normalized_path_energy"):
    assert np.isfinite(result[key]), key
  assert result["step"] == 40 and result["nfe"] > 0
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["w2"] == result["w2"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == [20, 40]
  assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in rows)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["method"] == method
  # Raising train.steps continues the run from its checkpoint.
  loop.train(tiny_config(method=method, train__steps=60), workdir)
  assert checkpoint.latest_step(workdir) == 60


def test_resume_is_bitwise_exact(tmp_path):
  ref, parts = str(tmp_path / "ref"), str(tmp_path / "parts")
  loop.train(tiny_config(train__steps=60), ref)
  loop.train(tiny_config(train__steps=20), parts)
  loop.train(tiny_config(train__steps=50), parts)   # ends off the chunk grid
  loop.train(tiny_config(train__steps=60), parts)
  a, b = restore_state(ref, tiny_config(train__steps=60)), restore_state(parts, tiny_config(train__steps=60))
  assert int(a.step) == int(b.step) == 60
  chex.assert_trees_all_equal(a, b)


def test_config_mismatch_on_resume(tmp_path):
  from fm import config as config_lib
  workdir = str(tmp_path / "run")
  loop.train(tiny_config(train__steps=20), workdir)
  with pytest.raises(config_lib.ConfigError, match="train.lr"):
    loop.train(tiny_config(train__steps=20, train__lr=0.5), workdir)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(tiny_config(train__steps=20), workdir)
  # Force divergence on resume: same config as saved, but with an absurd learning rate.
  bad = tiny_config(train__steps=60, train__lr=1e30)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(bad.to_dict(), f)
  with pytest.raises(loop.TrainingError, match="non-finite") as e:
    loop.train(bad, workdir)
  assert "step 20" in str(e.value)
  assert checkpoint.latest_step(workdir) == 20
  state = restore_state(workdir, bad)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


def test_multi_step_compiles_once():
  config = tiny_config()
  run = run_lib.build(config)

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
  loop.train(tiny_config(method="rf", train__steps=20), teacher)
  student = str(tmp_path / "rf2")
  config = tiny_config(method="rf", train__steps=20, reflow__teacher=teacher, reflow__solver="rk4",
                       reflow__steps=8)
  result = loop.train_and_evaluate(config, student)
  assert np.isfinite(result["w2"])
  with np.load(os.path.join(student, reflow.PAIRS_FILE)) as f:
    assert f["z0"].shape == f["z1"].shape == (256, 2)
  with pytest.raises(config_lib.ConfigError, match="reflow.teacher"):
    loop.prepare(tiny_config(method="rf", reflow__teacher=str(tmp_path / "nope")), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")


def test_unconverged_coupling_is_counted_and_warned(tmp_path, caplog):
  """A Sinkhorn plan cut at max_iterations is counted per log row and warned once per log interval."""
  import logging
  workdir = str(tmp_path / "sb")
  config = tiny_config(method="sbcfm", coupling__max_iterations=1, coupling__threshold=1e-9)
  with caplog.at_level(logging.WARNING, logger="fm"):
    loop.train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["coupling_unconverged"] for r in rows] == [20, 20]
  assert all(r["converged"] == 0.0 for r in rows)
  warned = [r.getMessage() for r in caplog.records if "did not converge" in r.getMessage()]
  assert len(warned) == 2 and "20 of 20 batches" in warned[0] and "coupling.max_iterations" in warned[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="fm"):   # converged: counted as 0, no warning
    loop.train(tiny_config(method="sbcfm", train__steps=20), str(tmp_path / "ok"))
  assert not [r for r in caplog.records if "did not converge" in r.getMessage()]
