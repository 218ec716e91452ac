"""Python config files, dotted command-line overrides, and the mapping of old config shapes.

A config is a Python file under `configs/` defining `get_config(arg=None)` that
returns an `ml_collections.ConfigDict`; `"configs/toy2d.py:smoke"` calls
`get_config("smoke")`. Overrides such as `train.steps=20000` are parsed with the
type of the default value, so `train.steps=1e4` or `train.stpes=10` fail early.

The component sections `coupling`, `path` and `time` are open: each names its
component (`name`, None = the method preset's) and holds only the options set;
an override may add any key to them (`coupling.reg_m=1.0`), parsed as a Python
literal, and the chosen component's factory then accepts or refuses it
(`fm.recipe.resolve`). `canonical` fills in the preset's names and sigma and
maps configs of the old shape (top-level `sigma` and `time_sampler`, a
`coupling` section without `name`) to the new one. Every problem is a
`fm.errors.UserError` (alias `ConfigError`) whose message is one sentence.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
from typing import Any, Iterable

from fm.errors import UserError


__all__ = ["ConfigError", "load", "apply_overrides", "to_dict", "from_dict", "flatten", "diff", "upgrade",
           "canonical", "check", "check_positive", "SECTIONS", "ALIASES", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw")
SECTIONS = ("coupling", "path", "time", "loss")   # open component sections: {name, ...that component's options}
# Old top-level keys (still accepted as overrides) -> their place in the sections.
ALIASES = {"sigma": "path.sigma", "time_sampler": "time.name"}
SCHEDULES = ("constant", "cosine")


ConfigError = UserError  # the historical name of `fm.errors.UserError`


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py` or `path.py:arg` by calling the file's `get_config([arg])`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_fm_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg) function")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    raise ConfigError(f"config {spec!r}: {e}") from e
  return from_dict(upgrade(to_dict(config)))


def to_dict(config) -> dict[str, Any]:
  """A plain nested dict (JSON-serialisable for toy configs)."""
  if hasattr(config, "to_dict"):   # an ml_collections.ConfigDict
    config = config.to_dict()
  return json.loads(json.dumps(config))


def from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
  import ml_collections  # pylint: disable=g-import-not-at-top  (imported on use: `fm --help` stays fast)
  return ml_collections.ConfigDict(d)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"train": {"steps": 1}} -> {"train.steps": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two nested dicts."""
  fa, fb = flatten(a), flatten(b)
  return sorted(k for k in set(fa) | set(fb) if fa.get(k, KeyError) != fb.get(k, KeyError))


def _parse_value(key: str, text: str, default: Any) -> Any:
  """Parses `text` with the type of `default`."""
  kind = type(default)
  try:
    if isinstance(default, bool):
      low = text.strip().lower()
      if low in ("true", "1", "yes"):
        return True
      if low in ("false", "0", "no"):
        return False
      raise ValueError
    if isinstance(default, int):
      value = ast.literal_eval(text)
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError
      return value
    if isinstance(default, float):
      value = ast.literal_eval(text) if text.strip().lower() not in ("inf", "-inf", "nan") else float(text)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError
      return float(value)
    if isinstance(default, str):
      return text
    if default is None:  # an unset option: "none", a bool, a literal, else a string
      low = text.strip().lower()
      if low in ("none", "null"):
        return None
      if low in ("true", "false"):
        return low == "true"
      try:
        value = ast.literal_eval(text)
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
      except (ValueError, SyntaxError):
        return text
    if isinstance(default, (tuple, list)):
      value = ast.literal_eval(text)
      if not isinstance(value, (tuple, list)):
        value = (value,)
      return kind(value)
  except (ValueError, SyntaxError):
    pass
  else:
    raise ConfigError(f"config key {key!r} has unsupported type {kind.__name__}")
  raise ConfigError(f"bad value {text!r} for config key {key!r}: expected {kind.__name__} "
                    f"like the default {default!r}")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Returns a copy of `config` with dotted `(key, text)` overrides applied.

  A key of an open section (`coupling.reg_m`) may be new: its value is parsed as
  a literal and checked later by the component's factory. `sigma` and
  `time_sampler` are accepted for `path.sigma` and `time.name`.
  """
  d = upgrade(to_dict(config))
  valid = flatten(d)
  for key, text in overrides:
    key = ALIASES.get(key, key)
    section, dot, option = key.partition(".")
    if key not in valid and section in SECTIONS and dot and option and "." not in option:
      valid[key] = None
      d.setdefault(section, {})
    if key not in valid:
      close = difflib.get_close_matches(key, list(valid), n=3)
      hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"valid keys: {', '.join(sorted(valid))}"
      raise ConfigError(f"unknown config key {key!r}; {hint}")
    node = d
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = _parse_value(key, text, valid[key])
  return from_dict(d)


# The end-of-training metrics of a config without `eval.metrics` (fm.evaluate.registry), by run kind.
AT_END_METRICS = {"points": "w2,path_energy", "images": "grid"}


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
  """A config dict of the old shape mapped to the new one (a new-shape dict is returned unchanged).

  Old: top-level `sigma` and `time_sampler`, `time = {m, s}` and a `coupling`
  section of every coupling's options, without `name`, unset ones None. New:
  `path = {name, sigma}`, `time = {name, ...}`, `coupling = {name, ...}`; the
  preset (`method`) fills in the names left None (`canonical`). A config from
  before `eval.metrics` gets the metrics its end of training computed; one
  without `model.num_classes` or a `cond` section the unconditional defaults
  (0; drop_prob 0, guidance 1).
  """
  d = json.loads(json.dumps(d))
  sections = {s: dict(d.get(s) or {}) for s in SECTIONS}
  if "sigma" in d:
    sections["path"].setdefault("sigma", d.pop("sigma"))
  if "time_sampler" in d:
    sections["time"].setdefault("name", d.pop("time_sampler"))
  for name, section in sections.items():
    section.setdefault("name", None)
    if name != "path":  # an unset option is the component's default: dropped
      section = {k: v for k, v in section.items() if v is not None or k == "name"}
    d[name] = section
  d["path"].setdefault("sigma", None)
  if isinstance(d.get("eval"), dict):   # before eval.metrics: what the end of training computed
    kind = "images" if (d.get("data") or {}).get("name") == "images" else "points"
    d["eval"].setdefault("metrics", AT_END_METRICS[kind])
  # Conditioning (docs/conditional.md), absent from configs older than it: unconditional defaults.
  if isinstance(d.get("model"), dict):
    d["model"].setdefault("num_classes", 0)
  d["cond"] = {"drop_prob": 0.0, "guidance": 1.0, **(d.get("cond") or {})}
  return d


def canonical(d: dict[str, Any]) -> dict[str, Any]:
  """The config dict a run records: new shape, the method preset's names and sigma filled in.

  Unset (None) options are dropped, so two configs that build the same run are
  equal. Names and values are not checked here (`fm.recipe.resolve` does that).
  """
  from fm import methods  # pylint: disable=g-import-not-at-top  (JAX on use)
  d = upgrade(d)
  preset = methods.PRESETS.get(d.get("method"))
  if preset is None:
    return d
  for section, default in (("coupling", preset.coupling), ("path", preset.path), ("time", preset.time),
                           ("loss", preset.loss)):
    if d[section].get("name") is None:
      d[section]["name"] = default
  if d["path"].get("sigma") is None:
    d["path"]["sigma"] = preset.sigma
  return d


_FLOAT32_MAX = 3.4028234663852886e38


def check_positive(f: dict[str, Any], keys: Iterable[str], allow_zero: bool = False) -> None:
  """Finite numbers > 0 (>= 0) at dotted `keys` of a flat dict; floats must also be finite in float32."""
  for key in keys:
    value = f[key]
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
        or value < 0 or (value == 0 and not allow_zero)
        or (isinstance(value, float) and value > _FLOAT32_MAX)):
      bound = ">= 0" if allow_zero else "> 0"
      f32 = " (in float32)" if isinstance(value, float) else ""
      raise ConfigError(f"bad value {value!r} for config key {key!r}: must be a finite number {bound}{f32}")


def _choice(key, value, choices):
  if value not in choices:
    raise ConfigError(f"bad value {value!r} for config key {key!r}; valid choices: {', '.join(map(str, choices))}")


def check(config) -> None:
  """The checks that need no component: required keys, the trainer's numbers, path.sigma's range.

  Imports nothing, so `fm train` answers these at once; `fm.recipe.resolve`
  runs it first and then checks every component through its factory.
  """
  d = upgrade(to_dict(config))
  f = flatten(d)
  for key in ("method", "seed", "model.name", "train.steps", "train.batch_size", "train.lr"):
    if key not in f:
      raise ConfigError(f"config is missing required key {key!r}")
  check_positive(f, ["train.steps", "train.batch_size", "train.lr", "train.steps_per_call", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints"])
  check_positive(f, ["train.warmup_steps", "train.grad_clip", "train.weight_decay"], allow_zero=True)
  check_positive(f, [k for k in ("eval.num_samples", "eval.euler_steps", "eval.grid_steps", "eval.batch_size",
                                 "eval.rtol", "eval.atol", "eval.fid_num") if k in f])
  check_positive(f, [k for k in ("eval.every",) if k in f], allow_zero=True)
  if not 0 <= f["train.ema_decay"] < 1:
    raise ConfigError(f"bad value {f['train.ema_decay']!r} for config key 'train.ema_decay': must be in [0, 1)")
  _choice("train.optimizer", f["train.optimizer"], OPTIMIZERS)
  _choice("train.schedule", f["train.schedule"], SCHEDULES)
  sigma = d["path"].get("sigma")
  if sigma is not None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
      raise ConfigError(f"bad value {sigma!r} for config key 'path.sigma': must be a number >= 0 or none "
                        f"(the method's default)")
    if d["method"] in ("rf", "meanflow") and sigma != 0:   # fm.methods.FIXED_SIGMA (no import here)
      raise ConfigError(f"bad value {sigma!r} for config key 'path.sigma' (sigma): method {d['method']!r} has "
                        f"sigma = 0, use 'icfm' for sigma > 0")
