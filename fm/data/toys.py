"""Jittable 2D toy distributions, `sample(name, key, n) -> [n, 2]`.

Conventions follow TorchCFM's 2D benchmarks (Tong et al. 2024) where they exist:
`gaussian` is N(0, I); `8gaussians` has centres on the circle of radius 5 and
covariance sqrt(0.1) I; `moons` is the two-moons set with noise 0.2, scaled by 3
and shifted by -1. The others are scaled to a similar spread (about [-4, 4]).

A task is written "source->target", e.g. "gaussian->8gaussians".
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fm.data.base import Source

__all__ = ["sample", "sample_labelled", "class_names", "check_labelled", "mode_centres", "LABELLED", "MODES", "log_prob", "parse_task", "check_options", "make_source", "x0_sampler", "NAMES",
           "TASKS", "DENSITIES"]

_EIGHT_RADIUS = 5.0
_EIGHT_VAR = 0.1 ** 0.5   # per-coordinate variance of each 8gaussians component (std 0.1 ** 0.25)


def _gaussian(key, n):
  return jax.random.normal(key, (n, 2))


def _eight_gaussians_labelled(key, n):
  """Points `[n, 2]` and their modes `[n]`: mode k is centred at angle k pi / 4 (counter-clockwise from 0)."""
  k_c, k_n = jax.random.split(key)
  idx = jax.random.randint(k_c, (n,), 0, 8)
  return _eight_centres()[idx] + 0.1 ** 0.25 * jax.random.normal(k_n, (n, 2)), idx


def _eight_gaussians(key, n):
  return _eight_gaussians_labelled(key, n)[0]


def _eight_centres():
  angles = jnp.arange(8) * (math.pi / 4)
  return _EIGHT_RADIUS * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)


def _moons_and_side(key, n):
  """Points `[n, 2]` and whether each is on the upper moon `[n]` bool."""
  k_s, k_a, k_n = jax.random.split(key, 3)
  theta = jax.random.uniform(k_a, (n,), maxval=math.pi)
  upper = jax.random.bernoulli(k_s, 0.5, (n,))
  outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)
  inner = jnp.stack([1 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=1)
  x = jnp.where(upper[:, None], outer, inner) + 0.2 * jax.random.normal(k_n, (n, 2))
  return 3.0 * x - 1.0, upper


def _moons_labelled(key, n):
  """Points `[n, 2]` and their moon `[n]`: 0 = the upper moon, 1 = the lower one."""
  x, upper = _moons_and_side(key, n)
  return x, jnp.where(upper, 0, 1).astype(jnp.int32)


def _moons(key, n):
  return _moons_and_side(key, n)[0]


def _scurve(key, n):
  k_a, k_n = jax.random.split(key)
  s = 3 * math.pi * (jax.random.uniform(k_a, (n,)) - 0.5)
  x = jnp.stack([jnp.sin(s), jnp.sign(s) * (jnp.cos(s) - 1)], axis=1)
  return 2.0 * (x + 0.1 * jax.random.normal(k_n, (n, 2)))


def _checkerboard(key, n):
  k_x, k_y, k_c = jax.random.split(key, 3)
  x = jax.random.uniform(k_x, (n,), minval=-2, maxval=2)
  y = jax.random.uniform(k_y, (n,)) - 2.0 * jax.random.randint(k_c, (n,), 0, 2)
  y = y + jnp.floor(x) % 2   # shift every other column by one square
  return 2.0 * jnp.stack([x, y], axis=1)


def _circles(key, n):
  k_r, k_a, k_n = jax.random.split(key, 3)
  radius = jnp.where(jax.random.bernoulli(k_r, 0.5, (n,)), 4.0, 2.0)
  theta = jax.random.uniform(k_a, (n,), maxval=2 * math.pi)
  x = radius[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)
  return x + 0.08 * jax.random.normal(k_n, (n, 2))


def _spirals(key, n):
  k_a, k_s, k_n = jax.random.split(key, 3)
  r = jnp.sqrt(jax.random.uniform(k_a, (n,))) * 3 * math.pi
  sign = jnp.where(jax.random.bernoulli(k_s, 0.5, (n,)), 1.0, -1.0)
  x = sign[:, None] * jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], axis=1)
  return 0.4 * x + 0.1 * jax.random.normal(k_n, (n, 2))


_SAMPLERS = {
    "gaussian": _gaussian, "8gaussians": _eight_gaussians, "moons": _moons,
    "scurve": _scurve, "checkerboard": _checkerboard, "circles": _circles, "spirals": _spirals,
}
NAMES = tuple(_SAMPLERS)

# Toys whose points carry a class label: name -> (labelled sampler, class names).
_LABELLED = {
    "8gaussians": (_eight_gaussians_labelled, tuple(f"mode {k} ({45 * k} deg)" for k in range(8))),
    "moons": (_moons_labelled, ("upper moon", "lower moon")),
}
LABELLED = tuple(_LABELLED)
# Toys made of modes: name -> centres `[K, 2]` (mode k = label k), for conditional runs' mode accuracy.
MODES = ("8gaussians",)


def _gaussian_log_prob(x):
  return -0.5 * jnp.sum(jnp.square(x), axis=-1) - math.log(2 * math.pi)


def _eight_gaussians_log_prob(x):
  """log of (1/8) sum_k N(x; c_k, s^2 I), s^2 = sqrt(0.1), as a log-sum-exp."""
  d2 = jnp.sum(jnp.square(x[..., None, :] - _eight_centres()), axis=-1)   # [..., 8]
  return (jax.scipy.special.logsumexp(-0.5 * d2 / _EIGHT_VAR, axis=-1) - math.log(8.0)
          - math.log(2 * math.pi * _EIGHT_VAR))


_DENSITIES = {"gaussian": _gaussian_log_prob, "8gaussians": _eight_gaussians_log_prob}
DENSITIES = tuple(_DENSITIES)   # toys whose log density is known in closed form
# The 2D protocol of Tong et al. (TMLR 2024).
TASKS = ("gaussian->8gaussians", "gaussian->moons", "8gaussians->moons", "gaussian->scurve")


def _check(name):
  if name not in _SAMPLERS:
    raise ValueError(f"unknown toy distribution {name!r}; valid toys: {', '.join(NAMES)}")


def sample(name: str, key, n: int):
  """Draws `[n, 2]` float32 samples of toy `name`; jittable in `key`."""
  _check(name)
  return _SAMPLERS[name](key, n).astype(jnp.float32)


def sample_labelled(name: str, key, n: int):
  """`(x [n, 2] float32, y [n] int32)`: the points of `sample(name, key, n)` (the same ones) and their classes.

  Only the toys in `LABELLED`: `8gaussians` labels a point by its mode k = 0..7,
  the centre at angle k pi / 4 counter-clockwise from the x axis; `moons` by its
  moon, 0 upper and 1 lower. Classes are equally likely in both.
  """
  check_labelled(name)
  x, y = _LABELLED[name][0](key, n)
  return x.astype(jnp.float32), y.astype(jnp.int32)


def class_names(name: str) -> tuple[str, ...]:
  """The class names of a labelled toy (index = label)."""
  check_labelled(name)
  return _LABELLED[name][1]


def mode_centres(name: str):
  """The mode centres `[K, 2]` of a toy in `MODES` (row k is the centre of label k)."""
  if name not in MODES:
    raise ValueError(f"toy {name!r} has no modes; toys with modes: {', '.join(MODES)}")
  return _eight_centres()


def check_labelled(name: str) -> None:
  """ValueError unless toy `name` has class labels."""
  _check(name)
  if name not in _LABELLED:
    raise ValueError(f"toy {name!r} has no class labels, so it cannot be the target of a conditional run "
                     f"(model.num_classes > 0); toys with labels: {', '.join(LABELLED)}")


def log_prob(name: str, x):
  """Closed-form log density `[n]` of toy `name` at `x` `[n, 2]` (only the toys in DENSITIES).

  The others are defined by a sampler only (moons, circles, ... have no simple density);
  ValueError names the toys that have one.
  """
  _check(name)
  if name not in _DENSITIES:
    raise ValueError(f"toy {name!r} has no closed-form density; toys with one: {', '.join(DENSITIES)}")
  return _DENSITIES[name](jnp.asarray(x))


def parse_task(task: str) -> tuple[str, str]:
  """"gaussian->moons" -> ("gaussian", "moons"); ValueError names the valid toys."""
  parts = task.split("->") if isinstance(task, str) else []
  if len(parts) != 2:
    raise ValueError(f"bad task {task!r}: write it as 'source->target' with toys from: {', '.join(NAMES)}")
  for p in parts:
    _check(p)
  return parts[0], parts[1]


def check_options(task: str = "8gaussians->moons", num_classes: int = 0) -> None:
  """ValueError unless `task` is "source->target" with known toys (with `num_classes` labels if > 0)."""
  _, target = parse_task(task)
  if num_classes:
    check_labelled(target)
    if num_classes != len(_LABELLED[target][1]):
      raise ValueError(f"model.num_classes={num_classes} but the target {target!r} has "
                       f"{len(_LABELLED[target][1])} classes; set model.num_classes={len(_LABELLED[target][1])}")


def make_source(batch_size: int, task: str = "8gaussians->moons", num_classes: int = 0) -> Source:
  """Fresh source and target samples of `task` every step (no stored data).

  With `num_classes > 0` (a conditional run) the batch is `(x0, x1, y1)`: the
  target's labels come with its points (`sample_labelled`, the same points as
  the unconditional draw).
  """
  check_options(task, num_classes)
  source, target = parse_task(task)

  def batch_fn(key, data):
    del data
    k0, k1 = jax.random.split(key)
    return sample(source, k0, batch_size), sample(target, k1, batch_size)

  def labelled_batch_fn(key, data):
    del data
    k0, k1 = jax.random.split(key)
    return (sample(source, k0, batch_size), *sample_labelled(target, k1, batch_size))

  classes = _LABELLED[target][1] if target in _LABELLED else None
  return Source(name="toy", shape=(2,), batch_fn=labelled_batch_fn if num_classes else batch_fn, data=None,
                sample_x0=lambda key, n: sample(source, key, n),
                description=f"fm.data.toys (generated): {task}", kind="points",
                classes=classes, class_probs=None if classes is None else (1 / len(classes),) * len(classes),
                labelled=bool(num_classes))


def x0_sampler(shape=(2,), task: str = "8gaussians->moons"):
  """The task's source distribution, `(key, n) -> [n, 2]`."""
  del shape
  source, _ = parse_task(task)
  return lambda key, n: sample(source, key, n)
