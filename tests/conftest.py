"""Session fixtures shared across test modules (defined here so each runs once per session)."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "toy2d.py") + ":smoke"


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
  """Every method trained and evaluated with `configs/toy2d.py:smoke` (300 steps) through the real loop.

  Returns `{method: (eval.json content, metrics.jsonl rows, workdir)}` and, under
  the key "untrained", the evaluation of the network before training (the same
  initialisation for every method: same seed and model).
  """
  from fm import config as config_lib, methods  # pylint: disable=g-import-not-at-top
  from fm.evaluate import toy  # pylint: disable=g-import-not-at-top
  from fm import recipe
  from fm import experiment  # pylint: disable=g-import-not-at-top
  out = {}
  for method in methods.NAMES:
    config = config_lib.apply_overrides(config_lib.load(SMOKE), [("method", method)])
    workdir = str(tmp_path_factory.mktemp(method))
    result = experiment.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(l) for l in f]
    out[method] = (result, rows, workdir)
  run = recipe.build(config)
  ec = config.eval
  out["untrained"] = toy.evaluate(run.model, run.init_state().params, config.data.task, ec.num_samples, ec.seed,
                                  ec.rtol, ec.atol, ec.euler_steps)
  return out
