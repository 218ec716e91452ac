"""Config files, dotted overrides and validation messages."""
import pytest

from fm import config as config_lib
from fm import recipe

SPEC = "configs/toy2d.py"


def test_load_default_and_smoke():
  c = config_lib.load(SPEC)
  s = config_lib.load(SPEC + ":smoke")
  assert c.train.steps == 20_000 and s.train.steps < 1000
  recipe.resolve(c)
  recipe.resolve(s)


def test_unknown_variant():
  with pytest.raises(config_lib.ConfigError, match="smoke"):
    config_lib.load(SPEC + ":smok")


def test_missing_file():
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load("configs/nope.py")


def test_overrides_are_typed():
  c = config_lib.apply_overrides(config_lib.load(SPEC), [
      ("train.steps", "123"), ("train.lr", "3e-4"), ("train.lr", "1"), ("data.task", "gaussian->moons"),
      ("sigma", "0.05"), ("eval.at_end", "false")])
  assert c.train.steps == 123 and isinstance(c.train.steps, int)
  assert c.train.lr == 1.0 and isinstance(c.train.lr, float)
  assert c.path.sigma == 0.05 and c.eval.at_end is False   # `sigma` is the old name of path.sigma
  assert config_lib.apply_overrides(config_lib.load(SPEC), [("sigma", "none")]).path.sigma is None


@pytest.mark.parametrize("key,value,match", [
    ("train.stpes", "10", "did you mean 'train.steps'"),
    ("train.steps", "1e4", "expected int"),
    ("train.steps", "ten", "expected int"),
    ("train.lr", "fast", "expected float"),
    ("eval.at_end", "maybe", "expected bool"),
])
def test_bad_overrides(key, value, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(config_lib.load(SPEC), [(key, value)])


@pytest.mark.parametrize("key,value,match", [
    ("method", "otfm", "valid choices: icfm, rf, otcfm"),
    ("data.task", "gaussian->moon", "moons"),
    ("data.task", "moons", "source->target"),
    ("train.optimizer", "sgd", "adam, adamw"),
    ("train.steps", "0", "> 0"),
    ("train.ema_decay", "1.5", r"\[0, 1\)"),
    ("reflow.teacher", "runs/x", "needs method 'rf'"),
])
def test_validation(key, value, match):
  c = config_lib.apply_overrides(config_lib.load(SPEC), [(key, value)])
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    recipe.resolve(c)
  assert str(e.value).count("\n") == 0


def test_rf_rejects_sigma():
  c = config_lib.apply_overrides(config_lib.load(SPEC), [("method", "rf"), ("sigma", "0.1")])
  with pytest.raises(config_lib.ConfigError, match="sigma"):
    recipe.resolve(c)


def test_diff_and_flatten():
  assert config_lib.flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}
  assert config_lib.diff({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b"]


@pytest.mark.parametrize("overrides,match", [
    ([("method", "sbcfm"), ("sigma", "0")], "sigma=0"),
    ([("method", "sbcfm"), ("sigma", "1e-30")], "epsilon"),
    ([("method", "sbcfm"), ("coupling.threshold", "0")], "threshold"),
    ([("method", "sbcfm"), ("coupling.max_iterations", "0")], "max_iterations"),
    ([("train.lr", "nan")], "train.lr"),
    ([("train.lr", "inf")], "train.lr"),
    ([("train.lr", "1e39")], "train.lr"),   # finite in Python, inf in float32
    ([("eval.rtol", "0")], "eval.rtol"),
])
def test_degenerate_values_refused(overrides, match):
  c = config_lib.apply_overrides(config_lib.load(SPEC), overrides)
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    recipe.resolve(c)
  assert str(e.value).count("\n") == 0


def test_coupling_settings_reach_the_coupling():
  from fm import recipe
  c = config_lib.apply_overrides(config_lib.load(SPEC), [
      ("method", "sbcfm"), ("coupling.threshold", "1e-5"), ("coupling.max_iterations", "7")])
  coupling = recipe.build(c).method.coupling
  assert coupling.threshold == 1e-5 and coupling.max_iterations == 7
