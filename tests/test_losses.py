"""The loss registry and its config section: presets fill it in, options reach the objective, bad ones are named."""
import pytest

from fm import config as config_lib, losses, meanflow, paths, recipe, timesteps
from fm.errors import UserError

SMOKE = "configs/toy2d.py:smoke"


def _resolve(*overrides):
  return recipe.resolve(config_lib.apply_overrides(config_lib.load(SMOKE), list(overrides)))


def test_presets_fill_the_loss_and_options_reach_it():
  assert _resolve(("method", "icfm")).loss.to_dict() == {"name": "cfm"}
  config = _resolve(("method", "meanflow"), ("loss.p", "0"), ("loss.equal_fraction", "0.5"))
  objective = recipe.build(config).method.objective
  assert isinstance(objective, meanflow.MeanFlowLoss)
  assert objective.p == 0.0 and objective.times.equal_fraction == 0.5 and objective.times.m == -2.0
  run = recipe.build(_resolve(("method", "sf2m")))
  assert run.model.outputs == 2 and recipe.head(run.config).kind == "flow_score"


@pytest.mark.parametrize("overrides,match", [
    ([("method", "meanflow"), ("loss.q", "1")], "loss 'meanflow' got unknown option"),
    ([("method", "icfm"), ("loss.name", "meanflw")], "bad value 'meanflw' for config key 'loss.name'; valid choices: cfm"),
    ([("method", "meanflow"), ("path.sigma", "0.1")], "method 'meanflow' has sigma = 0"),
    ([("method", "meanflow"), ("loss.equal_fraction", "2.0")], "equal_fraction must lie in"),
    ([("method", "icfm"), ("loss.name", "sf2m")], "sf2m needs the Brownian-bridge path 'sb'"),
])
def test_bad_loss_config(overrides, match):
  with pytest.raises((UserError, config_lib.ConfigError), match=match):
    _resolve(*overrides)


def test_a_config_file_cannot_contradict_the_head():
  config = config_lib.load(SMOKE)
  config.method, config.model.outputs = "sf2m", 1
  with pytest.raises(UserError, match="config key 'model.outputs': loss 'sf2m' needs outputs=2"):
    recipe.resolve(config)


def test_registry():
  assert losses.make("cfm", paths.make("linear"), timesteps.make("uniform")) is None
  with pytest.raises(ValueError, match="unknown loss 'l1'; valid losses: cfm, sf2m, meanflow"):
    losses.make("l1", paths.make("linear"), timesteps.make("uniform"))
