"""Shared test helpers: tiny configs, workdir snapshots, a trained run fixture."""
import os
import sys

import pytest

from fm import experiment
from fm import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "toy2d.py")

TINY = {
    "train.steps": "40", "train.batch_size": "32", "train.steps_per_call": "20",
    "train.log_every": "20", "train.checkpoint_every": "20", "model.width": "16", "model.depth": "2",
    "eval.num_samples": "64", "eval.euler_steps": "8", "reflow.num_pairs": "256",
}


def tiny_overrides(**kw):
  """TINY plus `kw` (dotted keys written with __ for '.') as (key, text) pairs."""
  items = dict(TINY)
  items.update({k.replace("__", "."): str(v) for k, v in kw.items()})
  return list(items.items())


def tiny_config(**kw):
  return config_lib.apply_overrides(config_lib.load(CONFIG + ":smoke"), tiny_overrides(**kw))


def cli_args(**kw):
  return [f"--config.{k}={v}" for k, v in tiny_overrides(**kw)]


def snapshot(path):
  """{relative path: (size, mtime_ns)} of everything under `path`."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      p = os.path.join(root, name)
      st = os.stat(p)
      out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
  return out


def subprocess_env():
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """One finished tiny otcfm run (40 steps) shared by sampling/CLI tests."""

  workdir = str(tmp_path_factory.mktemp("runs") / "ot")
  experiment.train_and_evaluate(tiny_config(method="otcfm"), workdir)
  return workdir


def restore_state(workdir, config):
  """The latest checkpointed `TrainState` of a run."""
  import jax  # pylint: disable=g-import-not-at-top
  from fm import recipe
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(workdir)
  shape = recipe.read_source_info(workdir)["shape"]
  state = ckpt.restore(jax.eval_shape(recipe.build(config, shape).init_state))
  ckpt.close()
  return state
