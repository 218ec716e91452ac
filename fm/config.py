"""Python config files, dotted command-line overrides and validation.

A config is a Python file under `configs/` defining `get_config(arg=None)` that
returns an `ml_collections.ConfigDict`; `"configs/toy2d.py:smoke"` calls
`get_config("smoke")`. Overrides such as `train.steps=20000` are parsed with the
type of the default value, so `train.steps=1e4` or `train.stpes=10` fail early.
Every problem is reported as a `ConfigError` whose message is one sentence that
names the bad key or value and the valid choices.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
from typing import Any, Iterable


__all__ = ["ConfigError", "load", "apply_overrides", "validate", "to_dict",
           "from_dict", "flatten", "diff", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
  """A bad config file, key or value; the message is a single sentence."""


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
  return from_dict(to_dict(config))


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
    if default is None:  # optional number: "none" or a literal, else a string
      if text.strip().lower() in ("none", "null"):
        return None
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
  """Returns a copy of `config` with dotted `(key, text)` overrides applied."""
  d = to_dict(config)
  valid = flatten(d)
  for key, text in overrides:
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


def _choice(key, value, choices):
  if value not in choices:
    raise ConfigError(f"bad value {value!r} for config key {key!r}; valid choices: {', '.join(map(str, choices))}")


_FLOAT32_MAX = 3.4028234663852886e38


def _positive(config_dict, keys, allow_zero=False):
  """Finite numbers > 0 (>= 0); floats must also be finite in float32, the dtype they are used in."""
  for key in keys:
    value = config_dict[key]
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
        or value < 0 or (value == 0 and not allow_zero)
        or (isinstance(value, float) and value > _FLOAT32_MAX)):
      bound = ">= 0" if allow_zero else "> 0"
      f32 = " (in float32)" if isinstance(value, float) else ""
      raise ConfigError(f"bad value {value!r} for config key {key!r}: must be a finite number {bound}{f32}")


def _component(key: str, build) -> None:
  """Runs a component's own validation; its ValueError becomes a ConfigError naming `key`."""
  try:
    build()
  except (ValueError, TypeError) as e:
    raise ConfigError(f"bad config {key!r}: {e}") from e


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and ranges; raises `ConfigError` with one sentence.

  The trainer's own numbers are checked here; every component (data source,
  model, method with its coupling and time sampler, optimizer) validates its
  own options through its factory, so a new component needs no change here.
  """
  f = flatten(to_dict(config))
  for key in ("method", "seed", "model.name", "train.steps", "train.batch_size", "train.lr"):
    if key not in f:
      raise ConfigError(f"config is missing required key {key!r}")
  # The trainer's numbers first: they need no imports, so these errors come at once.
  _positive(f, ["train.steps", "train.batch_size", "train.lr", "train.steps_per_call", "train.log_every",
                "train.checkpoint_every", "train.keep_checkpoints"])
  _positive(f, ["train.warmup_steps", "train.grad_clip", "train.weight_decay"], allow_zero=True)
  _positive(f, [k for k in ("eval.num_samples", "eval.euler_steps", "eval.grid_steps", "eval.batch_size",
                            "eval.rtol", "eval.atol") if k in f])
  _positive(f, [k for k in ("eval.every",) if k in f], allow_zero=True)
  if not 0 <= f["train.ema_decay"] < 1:
    raise ConfigError(f"bad value {f['train.ema_decay']!r} for config key 'train.ema_decay': must be in [0, 1)")
  _choice("train.optimizer", f["train.optimizer"], OPTIMIZERS)
  _choice("train.schedule", f["train.schedule"], SCHEDULES)
  sigma = f.get("sigma")
  if sigma is not None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
      raise ConfigError(f"bad value {sigma!r} for config key 'sigma': must be a number >= 0 or none (the method's default)")
    if f["method"] == "rf" and sigma != 0:
      raise ConfigError(f"bad value {sigma!r} for config key 'sigma': method 'rf' has sigma = 0, use 'icfm' for sigma > 0")
  from fm import data, methods, models, solvers  # pylint: disable=g-import-not-at-top
  from fm.train import run as run_lib, state as state_lib  # pylint: disable=g-import-not-at-top
  _choice("method", f["method"], methods.NAMES)
  name, options = data.split_options(to_dict(config.get("data", {})))
  _component("data", lambda: data.check(name, **options))
  _choice("model.name", f["model.name"], models.NAMES)
  _component("model", lambda: models.make(config.model.name, **run_lib.model_kwargs(config)))
  _component("method", lambda: methods.make(config.method, **run_lib.method_kwargs(config)))
  tc = config.train
  _component("train", lambda: state_lib.make_optimizer(
      tc.lr, tc.steps, tc.optimizer, tc.schedule, tc.warmup_steps, tc.grad_clip, tc.weight_decay))
  import jax  # pylint: disable=g-import-not-at-top
  if f["train.batch_size"] % jax.device_count():
    raise ConfigError(f"bad value {f['train.batch_size']!r} for config key 'train.batch_size': "
                      f"must be divisible by the {jax.device_count()} devices")
  if f.get("reflow.teacher"):
    if f["method"] != "rf":
      raise ConfigError(f"config key 'reflow.teacher' needs method 'rf' (reflow trains a rectified flow on "
                        f"teacher pairs), got method {f['method']!r}")
    _choice("reflow.solver", f["reflow.solver"], solvers.SOLVERS)
    _positive(f, ["reflow.num_pairs", "reflow.steps", "reflow.rtol", "reflow.atol"])
