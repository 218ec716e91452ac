"""Config -> run: validation (once), the model, the method's composition, optimizer, data and loading a run.

    config = recipe.resolve(config)            # every check, once; preset names and sigma filled in
    run = recipe.build(config, shape, mesh)    # model, method (coupling x path x time), optimizer, init
    loss = recipe.loss_fn(run)                 # loss(params, key, x0, x1) -> (loss, aux)
    run, ema_params, step = recipe.load(workdir)
    v = recipe.velocity(run.model, ema_params) # v(t, x) for the solvers

Each option is checked by its component's own factory (`couplings.make`,
`paths.make`, `timesteps.make`, `models.make`, `data.check`, the optimizer), so
a new component needs no change here. The workdir layout (config.json,
source.json) lives in `fm.train.workdir`; its readers are re-exported here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fm import config as config_lib
from fm import couplings, data, guidance, heads, losses, methods, models, paths, solvers, timesteps
from fm.errors import UserError
from fm.train import checkpoint, partitioning, reflow, state as state_lib
from fm.train.workdir import SOURCE_FILE, check_run, read_config, read_source_info, write_source_info

__all__ = ["Run", "resolve", "build", "loss_fn", "velocity", "head", "load", "compose", "model_kwargs", "data_options",
           "num_classes", "cond_settings",
           "load_data", "make_source", "x0_sampler", "read_config", "read_source_info", "write_source_info", "check_run",
           "SOURCE_FILE"]

@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run computes with; `config` is canonical (`fm.config.canonical`)."""
  config: ml_collections.ConfigDict
  shape: tuple[int, ...]
  model: Any
  method: methods.Method
  optimizer: optax.GradientTransformation
  init_state: Callable[[], state_lib.TrainState]

  def velocity(self, params, **model_extras) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return velocity(self.model, params, **model_extras)


def _hashable(v):
  return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's options: `config.model` without `name` (lists made tuples, so the module hashes), plus
  what the loss's head needs (`fm.heads`: `outputs=2` for sf2m, `second_time=True` for meanflow)."""
  options = {k: _hashable(v) for k, v in config_lib.to_dict(config.model).items() if k != "name"}
  for key, value in head(config).model_options.items():
    if options.get(key, value) != value:
      raise UserError(f"bad value {options[key]!r} for config key 'model.{key}': loss "
                      f"{config.loss.name!r} needs {key}={value!r} (set by the method)")
    options[key] = value
  return options


def head(config: ml_collections.ConfigDict) -> heads.Head:
  """What the network of a canonical config outputs, from its loss (`fm.losses.HEADS`)."""
  loss = config.get("loss", {}).get("name") or "cfm"
  return heads.make(losses.HEADS.get(loss, "velocity"))


def num_classes(config: ml_collections.ConfigDict) -> int:
  """`model.num_classes` (0 if unset): a run is conditional iff it is > 0."""
  return int(config.model.get("num_classes", 0) or 0)


def cond_settings(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """`(cond.drop_prob, cond.guidance)`; `(0.0, 1.0)` for a config without a `cond` section."""
  cond = config.get("cond", None) or {}
  return float(cond.get("drop_prob", 0.0)), float(cond.get("guidance", 1.0))


def data_options(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """`(name, options)` of the `data` section: the one place it becomes keyword arguments."""
  return data.split_options(config_lib.to_dict(config.get("data", {})))


def _options(d: dict[str, Any], section: str) -> tuple[str, dict[str, Any]]:
  options = dict(d[section])
  return options.pop("name"), {k: v for k, v in options.items() if v is not None}


def compose(d: dict[str, Any], mesh=None) -> methods.Method:
  """The method of a canonical config dict: its coupling x path x time sampler (factories' ValueErrors)."""
  coupling_name, coupling_options = _options(d, "coupling")
  path_name, path_options = _options(d, "path")
  time_name, time_options = _options(d, "time")
  loss_name, loss_options = _options(d, "loss")
  extra = sorted(set(path_options) - {"sigma"})
  if extra:
    raise UserError(f"config key 'path.{extra[0]}' is not an option of path {path_name!r}; the path section "
                    f"takes only: name, sigma")
  sigma = path_options.get("sigma")
  if coupling_name == "sb":   # the Schrodinger-bridge plan is the one of the path's own sigma
    coupling_options = {"sigma": sigma, **coupling_options}
  pieces = {}
  for key, make in (("path", lambda: methods.make_path(path_name, sigma)),
                    ("coupling", lambda: couplings.make(coupling_name, mesh=mesh, **coupling_options)),
                    ("time", lambda: timesteps.make(time_name, **time_options))):
    try:
      pieces[key] = make()
    except (ValueError, TypeError) as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f"bad config {key!r}: {e}") from e
  try:
    objective = losses.make(loss_name, pieces["path"], pieces["time"], **loss_options)
  except (ValueError, TypeError) as e:
    raise UserError(f"bad config 'loss': {e}") from e
  return methods.compose(pieces["coupling"], pieces["path"], pieces["time"], name=d["method"], objective=objective)


def _choice(key, value, choices):
  if value not in choices:
    raise UserError(f"bad value {value!r} for config key {key!r}; valid choices: {', '.join(map(str, choices))}")


def _component(key: str, make) -> None:
  """Runs a component's own validation; its ValueError becomes a UserError naming `key`."""
  try:
    make()
  except (ValueError, TypeError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"bad config {key!r}: {e}") from e


def resolve(config) -> ml_collections.ConfigDict:
  """The canonical config (new shape, preset filled in) after checking every name, range and option.

  Raises `UserError` with one sentence. The trainer's own numbers are checked
  by `fm.config.check`; each component validates its options through its factory.
  """
  config_lib.check(config)   # the trainer's numbers (no imports; `fm train` ran it before importing JAX)
  d = config_lib.to_dict(config)
  f = config_lib.flatten(d)
  _choice("method", f["method"], methods.NAMES)
  d = config_lib.canonical(d)
  for section, names in (("coupling", couplings.NAMES), ("path", paths.NAMES), ("time", timesteps.NAMES),
                         ("loss", losses.NAMES)):
    _choice(f"{section}.name", d[section]["name"], names)
  try:   # a loss that draws its own times (meanflow) would silently ignore a time sampler
    losses.check_time(d["loss"]["name"], d["time"]["name"], {k: v for k, v in d["time"].items() if k != "name"})
  except ValueError as e:
    raise UserError(f"config key {e}") from None
  config = config_lib.from_dict(d)
  name, options = data_options(config)
  _choice("model.name", f["model.name"], models.NAMES)
  _component("model", lambda: models.make(config.model.name, **model_kwargs(config)))
  classes = num_classes(config)   # a run is conditional iff model.num_classes > 0
  _component("data", lambda: data.check(name, num_classes=classes, **options))
  _component("cond", lambda: guidance.check(classes, *cond_settings(config)))
  compose(d)
  if d["coupling"].get("condition") == "within_class" and not (d["model"].get("num_classes") or 0) > 0:
    raise UserError("config key 'coupling.condition'='within_class' pairs x0 with x1 inside x1's classes, so it "
                    "needs a conditional run (model.num_classes > 0); use 'none' for an unconditional run")
  tc = config.train
  _component("train", lambda: state_lib.make_optimizer(
      tc.lr, tc.steps, tc.optimizer, tc.schedule, tc.warmup_steps, tc.grad_clip, tc.weight_decay))
  if f["train.batch_size"] % jax.device_count():
    raise UserError(f"bad value {f['train.batch_size']!r} for config key 'train.batch_size': "
                    f"must be divisible by the {jax.device_count()} devices")
  if f.get("reflow.teacher"):
    if classes:
      raise UserError("config key 'reflow.teacher' is for unconditional runs (reflow pairs carry no labels); "
                      "set model.num_classes=0 or reflow.teacher=''")
    if f["method"] != "rf":
      raise UserError(f"config key 'reflow.teacher' needs method 'rf' (reflow trains a rectified flow on "
                      f"teacher pairs), got method {f['method']!r}")
    _choice("reflow.solver", f["reflow.solver"], solvers.SOLVERS)
    config_lib.check_positive(f, ["reflow.num_pairs", "reflow.steps", "reflow.rtol", "reflow.atol"])
  return config


def build(config, shape: tuple[int, ...] = (2,), mesh=None) -> Run:
  """Model, method, optimizer and `init_state()` for a config (resolved or not) and example shape `[*shape]`.

  `mesh`: the data-parallel mesh training shards its batch over (the method's
  coupling then pairs per `coupling.scope`); None for sampling and evaluation.
  """
  shape = tuple(int(s) for s in shape)
  d = config_lib.canonical(config_lib.to_dict(config))
  config = config_lib.from_dict(d)
  model = models.make(config.model.name, **model_kwargs(config))
  method = compose(d, mesh=mesh)
  tc = config.train
  optimizer = state_lib.make_optimizer(
      tc.lr, tc.steps, tc.optimizer, tc.schedule, tc.warmup_steps, tc.grad_clip, tc.weight_decay)

  labels = {"y": jnp.zeros((1,), jnp.int32)} if num_classes(config) else {}

  def init_fn(key):
    extra = {"t2": jnp.zeros((1,))} if head(config).kind == "average_velocity" else {}
    return model.init(key, jnp.zeros((1,)), jnp.zeros((1, *shape)), **labels, **extra)

  return Run(config, shape, model, method, optimizer,
             lambda: state_lib.create(init_fn, optimizer, config.seed))


def loss_fn(run: Run):
  """`loss_fn(params, key, x0, x1, y1=None, **extras)` of the run's method; dropout draws from `fold_in(key, 0xD0)`.

  A conditional run passes the labels `y1` of x1; after the coupling (which
  carries them with x1) each is replaced by the null class with probability
  `cond.drop_prob`, drawn from `fold_in(key, 0xC1)` (classifier-free guidance's
  label dropout, `fm.guidance.drop_labels`).
  """
  classes = num_classes(run.config)
  drop_prob, _ = cond_settings(run.config)

  def f(params, key, x0, x1, y1=None, **extras):
    k_dropout = jax.random.fold_in(key, 0xD0)

    def apply_fn(p, t, x, t2=None, **model_extras):   # t2: MeanFlow's interval (second time), else None
      if t2 is not None:
        model_extras["t2"] = t2
      if "y" in model_extras:
        y = guidance.drop_labels(jax.random.fold_in(key, 0xC1), model_extras["y"], classes, drop_prob)
        model_extras = {**model_extras, "y": y}
      return run.model.apply(p, t, x, train=True, rngs={"dropout": k_dropout}, **model_extras)
    return run.method.loss(apply_fn, params, key, x0, x1, y1, **extras)
  return f


def load_data(config: ml_collections.ConfigDict):
  """The config's training data `Source`, checked against the model; UserError (one sentence) if either
  does not fit. The model is checked from one decoded example (`fm.data.example_shape`) before the data
  is loaded, and again after: `fm train` calls this before the workdir is created or locked, so bad
  data or a model that cannot take it leaves nothing behind."""
  name, options = data_options(config)
  model = models.make(config.model.name, **model_kwargs(config))

  def check(shape):
    try:
      models.check_shape(model, shape)
    except ValueError as e:
      raise UserError(f"bad config 'model' for data of shape {list(shape)}: {e}") from e
  try:
    shape = data.example_shape(name, **options)
    if shape is not None:
      check(shape)
    source = data.make(name, config.train.batch_size, num_classes=num_classes(config), **options)
  except UserError:
    raise
  except ValueError as e:
    raise UserError(f"bad data ({name}): {e}") from e
  check(source.shape)
  return source


def make_source(config: ml_collections.ConfigDict, workdir: str | None = None, loaded=None):
  """`(source, teacher_step)`: the training data (`loaded`, or `load_data(config)`), or for reflow the
  teacher's pairs (made once, in `workdir`)."""
  tc = config.train
  source = load_data(config) if loaded is None else loaded
  if not config.reflow.get("teacher"):
    return source, None
  from fm.data import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
  rc = config.reflow
  pairs = reflow.load_or_make_pairs(
      workdir, rc.teacher, source.sample_x0, rc.num_pairs, config.seed, load_teacher=load,
      solver=rc.solver, rtol=rc.rtol, atol=rc.atol, steps=rc.steps)
  teacher_step = pairs["teacher_step"]
  at = f" (checkpoint {teacher_step})" if teacher_step is not None else ""
  source = pairs_lib.source(source, pairs, tc.batch_size,
                            f"reflow pairs from teacher {rc.teacher}{at} on {source.description}")
  return source, teacher_step


def x0_sampler(config: ml_collections.ConfigDict, shape: tuple[int, ...]):
  """`sample_x0(key, n) -> [n, *shape]` of a run's source distribution (no training data loaded)."""
  name, options = data_options(config)
  return data.x0_sampler(name, tuple(shape), **options)


def load(workdir: str, step: int | None = None, mesh=None) -> tuple[Run, Any, int]:
  """`(run, ema_params, step)` of checkpoint `step` (default: the latest) in `workdir`.

  A config.json of the old shape is mapped to the new one. The parameters are
  restored replicated on every device of `mesh` (default: all devices of all
  processes), whatever the device count of the training run. The latest
  checkpoint removed while it is read (a running `fm train` rotating its
  checkpoints) is not an error: the newest that exists then is read.
  """
  latest = check_run(workdir)
  asked, step = step, latest if step is None else step
  if step not in checkpoint.all_steps(workdir):
    raise UserError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                    f"saved steps: {', '.join(map(str, checkpoint.all_steps(workdir)))}")
  run = build(read_config(workdir), read_source_info(workdir)["shape"])
  mesh = partitioning.make_mesh() if mesh is None else mesh
  abstract = partitioning.abstract_replicated(jax.eval_shape(run.init_state), mesh)
  for _ in range(5):   # a running fm train may rotate the checkpoint away while it is read
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      state = ckpt.restore(abstract, step)
      break
    except Exception as e:  # pylint: disable=broad-except
      steps = checkpoint.all_steps(workdir)
      if step not in steps and steps:   # rotated away, not damaged
        if asked is not None:
          raise UserError(f"checkpoint {step} in {workdir!r} was removed while it was read (a running fm "
                          f"train keeps only its newest); saved steps now: {', '.join(map(str, steps))}") from None
        step = steps[-1]
        continue
      others = [s for s in steps if s != step]
      hint = f"; pass --step with one of the other saved steps: {', '.join(map(str, others))}" if others else ""
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
      raise UserError(f"checkpoint {step} in {workdir!r} cannot be read ({first}){hint}") from None
    finally:
      ckpt.close()
  else:
    raise UserError(f"the checkpoints in {workdir!r} were rotated away five times while being read; "
                    f"pass --step, or wait for fm train to finish")
  return run, state.ema_params, step


def velocity(model, params, **model_extras) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`v(t, x)` with scalar t, as the solvers expect (deterministic: no dropout); extras go to `model.apply`.

  The model's head (`fm.heads.for_model`) says how: an SF2M network's flow half, a MeanFlow
  network's instantaneous velocity u(x, t, t).
  """
  return heads.for_model(model).velocity(model, params, **model_extras)

