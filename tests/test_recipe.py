"""Config sections, method presets, component validation and old config shapes (fm.recipe)."""
import json
import os
import shutil

import pytest

from fm import cli, config as config_lib, couplings, errors, experiment, methods, paths, recipe, timesteps
from fm.train import workdir as workdir_lib
from train.helpers import CONFIG, cli_args

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "old_workdir.json")


def _config(*overrides, spec=CONFIG):
  return config_lib.apply_overrides(config_lib.load(spec), overrides)


def _smoke(overrides):
  """The smoke config the fixture's runs used, with their overrides."""
  return _config(*overrides.items(), spec=CONFIG + ":smoke")


def _old():
  """Old-shape config.json files written by the code of a32103e (experiments/fixtures/old_workdir.py)."""
  with open(FIXTURE) as f:
    return json.load(f)


# Each preset's components, written out by hand (not through fm.methods).
EXPECTED = {
    "icfm": (couplings.Independent(), paths.Linear(sigma=0.1)),
    "rf": (couplings.Independent(), paths.Linear(sigma=0.0)),
    "otcfm": (couplings.Exact(), paths.Linear(sigma=0.1)),
    "sbcfm": (couplings.SB(sigma=1.0), paths.BrownianBridge(sigma=1.0)),
    "fm": (couplings.Independent(), paths.Lipman(sigma_min=1e-4)),
    "vp": (couplings.Independent(), paths.VariancePreserving(sigma=0.1)),
    "sf2m": (couplings.SB(sigma=1.0), paths.BrownianBridge(sigma=1.0)),
    "meanflow": (couplings.Independent(), paths.Linear(sigma=0.0)),
}
EXPECTED_LOSS = {"sf2m": "sf2m", "meanflow": "meanflow"}   # the others: cfm


def test_user_error_is_config_error():
  assert config_lib.ConfigError is errors.UserError and issubclass(cli.UsageError, errors.UserError)


@pytest.mark.parametrize("name", methods.NAMES)
def test_a_preset_fills_in_what_is_unset(name):
  coupling, path = EXPECTED[name]
  config = recipe.resolve(_config(("method", name)))
  preset = methods.PRESETS[name]
  assert config.coupling.to_dict() == {"name": preset.coupling}
  assert config.path.to_dict() == {"name": preset.path, "sigma": preset.sigma}
  assert config.time.to_dict() == {"name": "uniform"}
  assert config.loss.to_dict() == {"name": EXPECTED_LOSS.get(name, "cfm")}
  method = recipe.build(config).method
  assert (method.coupling, method.path, method.time_sampler) == (coupling, path, timesteps.Uniform())


def test_sections_override_the_preset():
  config = recipe.resolve(_config(("coupling.name", "sinkhorn"), ("coupling.epsilon", "0.05"),
                                  ("time.name", "logit_normal"), ("time.m", "0.5"), ("time.s", "2")))
  method = recipe.build(config).method
  assert config.method == "otcfm" and method.coupling == couplings.Sinkhorn(epsilon=0.05)
  assert method.path == paths.Linear(sigma=0.1) and method.time_sampler == timesteps.LogitNormal(m=0.5, s=2.0)
  # sbcfm's coupling follows the path's sigma unless it is set itself
  assert recipe.build(_config(("method", "sbcfm"), ("path.sigma", "0.5"))).method.coupling == couplings.SB(sigma=0.5)


def test_section_keys_from_the_command_line_are_literals():
  config = _config(("coupling.reg_m", "1"), ("coupling.replace", "true"), ("coupling.solver", "auction"),
                   ("path.sigma", "0"), ("sigma", "0.2"), ("time_sampler", "logit_normal"))
  assert config.coupling.reg_m == 1.0 and isinstance(config.coupling.reg_m, float)
  assert config.coupling.replace is True and config.coupling.solver == "auction"
  assert config.path.sigma == 0.2 and config.time.name == "logit_normal"   # the old names still work
  with pytest.raises(errors.UserError, match="did you mean"):
    _config(("model.widht", "3"))   # closed sections stay closed
  with pytest.raises(errors.UserError, match="unknown config key 'coupling.a.b'"):
    _config(("coupling.a.b", "3"))


@pytest.mark.parametrize("overrides,match", [
    ([("coupling.epsilon", "0.05")], r"\['epsilon'\] for coupling 'exact'; valid: \('solver', 'max_rounds'\)"),
    ([("coupling.name", "sinkhorn"), ("coupling.reg_m", "1.0")], r"\['reg_m'\].*'epsilon', 'relative'"),
    ([("path.scale", "2")], "'path.scale' is not an option of path 'linear'; the path section takes only: name, sigma"),
    ([("time.m", "0.5")], r"time sampler 'uniform' got unknown argument\(s\) \['m'\]"),
    ([("time.name", "logit_normal"), ("time.q", "1")], r"\['q'\]; valid: \['m', 's'\]"),
    ([("coupling.name", "exactt")], "'coupling.name'; valid choices: independent, exact"),
    ([("path.name", "curved")], "'path.name'; valid choices: linear, sb"),
    ([("method", "rf"), ("sigma", "0.1")], "'path.sigma' .*method 'rf' has sigma = 0"),
    ([("path.sigma", "-1")], "'path.sigma': must be a number >= 0"),
    ([("coupling.name", "partial"), ("coupling.mass", "1.5")], r"mass=1.5 must be a number in \(0, 1\]"),
    ([("coupling.name", "unbalanced"), ("coupling.reg_m", "0")], r"reg_m=0(\.0)? must be a finite number > 0"),
    ([("coupling.condition", "across")], "unknown coupling condition 'across'; valid: none, within_class"),
    ([("coupling.name", "sinkhorn"), ("coupling.condition", "within_class")], r"needs a conditional run"),
])
def test_an_option_the_component_does_not_take_is_one_sentence(overrides, match):
  with pytest.raises(errors.UserError, match=match) as e:
    recipe.resolve(_config(*overrides))
  assert "\n" not in str(e.value)


def test_old_config_json_maps_to_the_new_shape():
  for method, entry in _old().items():
    old = entry["config"]
    assert "sigma" in old and "time_sampler" in old and "name" not in old["coupling"]
    new = config_lib.to_dict(recipe.resolve(_smoke(entry["overrides"])))
    assert config_lib.canonical(old) == new, method
    assert recipe.build(config_lib.from_dict(old)).method == recipe.build(config_lib.from_dict(new)).method


@pytest.fixture(scope="module")
def old_otcfm_run(tmp_path_factory):
  """The old-shape fixture's otcfm run (40 steps) trained once, for the two tests below that read it."""
  workdir = str(tmp_path_factory.mktemp("old_otcfm") / "run")
  experiment.train(_smoke(_old()["otcfm"]["overrides"]), workdir)
  return workdir


@pytest.mark.parametrize("method", ["otcfm", "sbcfm"])
def test_presets_train_to_the_same_losses_as_before(method, tmp_path, request):
  """The losses and coupling costs of 40 steps are bitwise those of the code before presets."""
  entry = _old()[method]
  if method == "otcfm":
    workdir = request.getfixturevalue("old_otcfm_run")
  else:
    workdir = str(tmp_path)
    experiment.train(_smoke(entry["overrides"]), workdir)
  rows = workdir_lib.read_metrics(workdir)
  assert [{k: r[k] for k in want} for r, want in zip(rows, entry["metrics"])] == entry["metrics"]
  assert len(rows) == len(entry["metrics"])


def test_an_old_workdir_samples_evaluates_and_resumes(tmp_path, capsys, old_otcfm_run):
  entry = _old()["otcfm"]
  workdir = str(tmp_path / "old")
  shutil.copytree(old_otcfm_run, workdir)   # a copy: this test rewrites and resumes it
  with open(os.path.join(workdir, "config.json"), "w") as f:   # as the code before wrote it
    json.dump(entry["config"], f)
  assert cli.main(["sample", "--workdir", workdir, "--num", "16", "--solver", "euler", "--steps", "4"]) == 0
  assert cli.main(["eval", "--workdir", workdir, "--metrics", "w2", "--num", "32", "--solver", "euler",
                   "--steps", "4"]) == 0
  # the same command as before: nothing changed, so nothing is rewritten
  args = [f"--config.{k}={v}" for k, v in entry["overrides"].items()]
  assert cli.main(["train", "--config", CONFIG + ":smoke", "--workdir", workdir, *args]) == 0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f) == entry["config"]
  # resumed from its config.json alone, for 20 more steps: only train.steps changed
  assert cli.main(["train", "--workdir", workdir, "--config.train.steps=60"]) == 0
  resume = workdir_lib.read_history(workdir)[-1]
  assert resume["event"] == "resume" and resume["changes"] == {"train.steps": [40, 60]}
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["coupling"] == {"name": "exact"} and saved["path"] == {"name": "linear", "sigma": 0.1}
  assert "sigma" not in saved and "time_sampler" not in saved
  capsys.readouterr()


def test_cli_trains_otcfm_with_a_sinkhorn_plan_validating_once(tmp_path, capsys, monkeypatch):
  calls = []
  resolve = recipe.resolve
  monkeypatch.setattr(recipe, "resolve", lambda c: calls.append(1) or resolve(c))
  workdir = str(tmp_path / "sk")
  base = ["train", "--config", CONFIG + ":smoke", "--workdir", workdir,
          *cli_args(train__steps=20, eval__at_end="false"), "--config.coupling.name=sinkhorn"]
  assert cli.main([*base, "--config.coupling.reg_m=1.0"]) == 2
  err = capsys.readouterr().err
  assert "reg_m" in err and "epsilon" in err and err.count("\n") == 1 and not os.path.exists(workdir)
  calls.clear()
  assert cli.main([*base, "--config.coupling.epsilon=0.05"]) == 0
  assert len(calls) == 1   # the config is checked once per fm train
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["coupling"] == {"name": "sinkhorn", "epsilon": 0.05}
  assert saved["path"] == {"name": "linear", "sigma": 0.1} and saved["method"] == "otcfm"
  rows = workdir_lib.read_metrics(workdir)
  assert rows[-1]["cost_after"] < rows[-1]["cost_before"]


OWN_TIMES = "set them with loss.m, loss.s, loss.equal_fraction"


@pytest.mark.parametrize("overrides,key", [
    ((("time.name", "logit_normal"),), "time.name='logit_normal'"),
    ((("time.name", "logit_normal"), ("time.m", "0.5")), "time.name='logit_normal'"),
    ((("time.m", "-1"),), "time.m=-1.0"),
    ((("time_sampler", "logit_normal"),), "time.name='logit_normal'"),
])
def test_meanflow_refuses_a_time_sampler_it_would_ignore(overrides, key):
  """MeanFlow draws its own (t, r) (loss.m, loss.s, loss.equal_fraction): any time.* other than the default is
  refused in one sentence naming the key; so is meanflow's loss on another preset, and methods.make."""
  with pytest.raises(errors.UserError) as e:
    recipe.resolve(_config(("method", "meanflow"), *overrides))
  assert str(e.value).startswith(f"config key {key} has no effect on loss 'meanflow'") and OWN_TIMES in str(e.value)
  assert "\n" not in str(e.value)
  with pytest.raises(errors.UserError, match=OWN_TIMES):
    recipe.resolve(_config(("method", "icfm"), ("loss.name", "meanflow"), *overrides))
  if key.startswith("time.name"):
    recipe.resolve(_config(("method", "icfm"), *overrides))   # a CFM loss uses the time section
  with pytest.raises(ValueError, match=OWN_TIMES):
    methods.make("meanflow", time_sampler="logit_normal")


@pytest.mark.parametrize("spec", [CONFIG, CONFIG + ":smoke", os.path.join(os.path.dirname(CONFIG), "cifar10.py:meanflow"),
                                  os.path.join(os.path.dirname(CONFIG), "cifar10.py:meanflow_smoke")])
def test_meanflow_configs_and_old_shapes_keep_the_default_time_section(spec):
  """The meanflow configs, presets and an old-shape config (time = {m: None, s: None}, time_sampler uniform) pass."""
  from fm import losses
  config = _config(("method", "meanflow"), spec=spec)
  d = config_lib.canonical(config_lib.to_dict(config))
  assert d["loss"]["name"] == "meanflow" and d["time"] == {"name": "uniform"}
  losses.check_time("meanflow", d["time"]["name"], {k: v for k, v in d["time"].items() if k != "name"})
  if spec.startswith(CONFIG):   # the image configs' data is not here; their time section is checked above
    recipe.resolve(config)
    old = config_lib.to_dict(config)
    old["time"], old["time_sampler"] = {"m": None, "s": None}, "uniform"
    assert config_lib.canonical(config_lib.upgrade(old)) == config_lib.to_dict(recipe.resolve(config))
    recipe.resolve(config_lib.from_dict(config_lib.upgrade(old)))
  methods.make("meanflow")
  assert [n for n, p in methods.PRESETS.items() if p.loss in losses.OWN_TIMES and p.time != "uniform"] == []


def test_a_meanflow_workdir_with_a_time_sampler_samples_but_does_not_resume(smoke_runs, tmp_path, capsys):
  """A workdir saved before the check with a time sampler set: fm sample still reads it (the sampler never
  used the time section); fm train refuses to go on with a setting that would be ignored."""
  import shutil
  workdir = str(tmp_path / "mf")
  shutil.copytree(smoke_runs["meanflow"][2], workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved["time"] = {"name": "logit_normal", "m": 0.0, "s": 1.0}
  with open(path, "w") as f:
    json.dump(saved, f)
  assert cli.main(["sample", "--workdir", workdir, "--solver", "meanflow", "--steps", "1", "--num", "8",
                   "--out", str(tmp_path / "s.npz")]) == 0
  capsys.readouterr()
  assert cli.main(["train", "--workdir", workdir, "--config.train.steps=400"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config key time.name='logit_normal' has no effect on loss 'meanflow'" in err
