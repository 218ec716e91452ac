"""Flow-matching methods: a coupling x a probability path x a time sampler, and the named presets.

A `Method` is any composition of the three (`compose`); a method *name* is only
a preset (`PRESETS`) that fills in the component names and sigma a config leaves
unset, so `method=otcfm` with `coupling.name=sinkhorn` is OT-CFM with an
entropic plan on the same linear path.

=======  =====================================  =========================  =============
name     coupling                               path                       default sigma
=======  =====================================  =========================  =============
icfm     independent                            linear(sigma)              0.1
rf       independent                            linear(0)                  0 (fixed)
otcfm    exact minibatch OT                     linear(sigma)              0.1
sbcfm    entropic OT, epsilon = 2 sigma^2       sb(sigma) Brownian bridge  1.0
fm       independent (x0 ~ N(0, I))             lipman(sigma_min=sigma)    1e-4
vp       independent                            vp(sigma)                  0.1
sf2m     entropic OT, epsilon = 2 sigma^2       sb(sigma) Brownian bridge  1.0
meanflow independent                            linear(0)                  0 (fixed)
=======  =====================================  =========================  =============

The loss is the mean over all elements of (v_theta(t, x_t) - u_t)^2, as in TorchCFM,
so loss values are comparable across codebases; a preset's `loss` replaces it with
another objective on the coupled pairs (`fm.losses`): sf2m trains a flow and a score
head (`fm.sf2m`), meanflow an average velocity (`fm.meanflow`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fm import couplings, losses, paths, timesteps

__all__ = ["Method", "Preset", "PRESETS", "FIXED_SIGMA", "compose", "make", "make_path", "NAMES", "DEFAULT_SIGMA"]


@dataclasses.dataclass(frozen=True)
class Preset:
  """What a method name fills in: component names and the path's sigma."""
  coupling: str
  path: str
  sigma: float
  time: str = "uniform"
  loss: str = "cfm"


PRESETS = {
    "icfm": Preset("independent", "linear", 0.1),
    "rf": Preset("independent", "linear", 0.0),
    "otcfm": Preset("exact", "linear", 0.1),
    "sbcfm": Preset("sb", "sb", 1.0),
    "fm": Preset("independent", "lipman", 1e-4),
    "vp": Preset("independent", "vp", 0.1),
    "sf2m": Preset("sb", "sb", 1.0, loss="sf2m"),
    "meanflow": Preset("independent", "linear", 0.0, loss="meanflow"),
}
FIXED_SIGMA = ("rf", "meanflow")   # presets whose path has sigma = 0 and takes no other
NAMES = tuple(PRESETS)
DEFAULT_SIGMA = {name: p.sigma for name, p in PRESETS.items()}


@dataclasses.dataclass(frozen=True)
class Method:
  """A coupling + a path + a time sampler; `loss` is the conditional flow-matching loss."""
  name: str
  coupling: Callable
  path: paths.Path
  time_sampler: Callable
  objective: Callable | None = None   # `objective(apply_fn, params, key, x0, x1)` on coupled pairs; None: CFM

  def loss(self, apply_fn, params, key, x0, x1, y1=None, **extras):
    """CFM loss on one batch.

    Args:
      apply_fn: `apply_fn(params, t, x, **extras) -> v`, t `[B]`, x and v `[B, *shape]`;
        with labels also `y=` `[B]` int.
      params: network parameters.
      key: PRNG key for coupling, times and path noise.
      x0, x1: source and target batches `[B, *shape]`.
      y1: the int labels `[B]` of x1 (a conditional run) or None; they follow
        x1 through the coupling and reach `apply_fn` as `y=`.
      **extras: passed to `apply_fn` (other model conditioning).

    Returns:
      `(loss, aux)`: scalar loss and a dict of scalar diagnostics (`loss` and the
      coupling's info, e.g. `cost_before`, `cost_after`).
    """
    k_couple, k_t, k_eps = jax.random.split(key, 3)
    # The labels travel with x1: a condition-aware coupling (coupling.condition) pairs inside their classes.
    i0, i1, info = self.coupling(k_couple, x0, x1) if y1 is None else self.coupling(k_couple, x0, x1, y1=y1)
    x0, (x1, y1) = couplings.apply(i0, i1, x0, (x1, y1))
    if y1 is not None:
      extras = {**extras, "y": y1}
    if self.objective is not None:
      def apply_pairs(p, t, x, t2=None):   # an objective's 4th argument is the second time t2
        return apply_fn(p, t, x, **({} if t2 is None else {"t2": t2}), **extras)
      loss, aux = self.objective(apply_pairs, params,
                                 jax.random.fold_in(k_t, 1), x0, x1)
      return loss, {**aux, **info}
    t = self.time_sampler(k_t, x0.shape[0], x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t, u_t = self.path.interpolate(x0, x1, t, eps)
    v = apply_fn(params, t, x_t, **extras)
    loss = jnp.mean(jnp.square(v - u_t))
    return loss, {"loss": loss, **info}


def make_path(name: str, sigma: float | None) -> paths.Path:
  """The path `name` at noise level `sigma` (sigma_min for "lipman"; None: the path's default)."""
  return paths.make(name, **({"sigma_min": sigma} if name == "lipman" else {"sigma": sigma}))


def compose(coupling: Callable, path: paths.Path, time_sampler: Callable, name: str = "custom",
            objective: Callable | None = None) -> Method:
  """A method from its components (`fm.recipe.build` assembles them from a config); objective: `fm.losses`."""
  return Method(name=name, coupling=coupling, path=path, time_sampler=time_sampler, objective=objective)


def make(name: str, sigma: float | None = None, time_sampler: str = "uniform",
         time_kwargs: dict[str, Any] | None = None, mesh=None, **coupling_kwargs) -> Method:
  """Builds the preset `name` with its own components, e.g. `make("otcfm", sigma=0.0)`.

  Args:
    name: one of `NAMES`.
    sigma: noise level of the path (sigma_min for "fm"); None takes the preset's
      (`DEFAULT_SIGMA`). For "sbcfm" it also sets the entropic regularisation
      epsilon = 2 sigma^2 of the coupling. "rf" only takes 0.
    time_sampler: "uniform" or "logit_normal"; `time_kwargs` are its arguments.
    mesh: data-parallel mesh the batch is sharded over (None: one device);
      with `scope=` ("global" | "local") it says how the coupling pairs it.
    **coupling_kwargs: passed to the coupling (e.g. `solver=` for exact OT,
      `threshold=` for sb, `scope=`).
  """
  if name not in PRESETS:
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(NAMES)}")
  preset = PRESETS[name]
  if name in FIXED_SIGMA and sigma not in (None, 0, 0.0):
    raise ValueError(f"method {name!r} has sigma = 0, got sigma={sigma!r}; use 'icfm' for sigma > 0")
  losses.check_time(preset.loss, time_sampler, time_kwargs or {})
  sigma = preset.sigma if sigma is None else sigma
  if preset.coupling == "sb":
    coupling_kwargs = {"sigma": sigma, **coupling_kwargs}
  path = make_path(preset.path, sigma)
  sampler = timesteps.make(time_sampler, **(time_kwargs or {}))
  return compose(couplings.make(preset.coupling, mesh=mesh, **coupling_kwargs), path, sampler, name=name,
                 objective=losses.make(preset.loss, path, sampler))
