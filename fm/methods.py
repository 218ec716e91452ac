"""Named flow-matching methods: a coupling, a probability path and a time sampler.

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

sf2m trains a flow and a score head (one network, 2x outputs; `fm.sf2m`), meanflow
an average velocity u(x, t, r) (a second time input; `fm.meanflow`); their objectives
replace the CFM loss below, and `HEADS` says what the network must output.

The loss is the mean over all elements of (v_theta(t, x_t) - u_t)^2, as in TorchCFM,
so loss values are comparable across codebases.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fm import couplings, meanflow, paths, sf2m, timesteps

__all__ = ["Method", "make", "NAMES", "DEFAULT_SIGMA", "HEADS"]

# name -> (coupling name, path name, default sigma)
_SPEC = {
    "icfm": ("independent", "linear", 0.1),
    "rf": ("independent", "linear", 0.0),
    "otcfm": ("exact", "linear", 0.1),
    "sbcfm": ("sb", "sb", 1.0),
    "fm": ("independent", "lipman", 1e-4),
    "vp": ("independent", "vp", 0.1),
    "sf2m": ("sb", "sb", 1.0),
    "meanflow": ("independent", "linear", 0.0),
}
HEADS = {"sf2m": "flow_score", "meanflow": "average_velocity"}   # others: "velocity" (fm.heads)
NAMES = tuple(_SPEC)
DEFAULT_SIGMA = {name: spec[2] for name, spec in _SPEC.items()}


@dataclasses.dataclass(frozen=True)
class Method:
  """A coupling + a path + a time sampler; `loss` is the conditional flow-matching loss."""
  name: str
  coupling: Callable
  path: paths.Path
  time_sampler: Callable
  objective: Callable | None = None   # `objective(apply_fn, params, key, x0, x1)` on coupled pairs; None: CFM

  def loss(self, apply_fn, params, key, x0, x1):
    """CFM loss on one batch.

    Args:
      apply_fn: `apply_fn(params, t, x) -> v`, t `[B]`, x and v `[B, *shape]`.
      params: network parameters.
      key: PRNG key for coupling, times and path noise.
      x0, x1: source and target batches `[B, *shape]`.

    Returns:
      `(loss, aux)`: scalar loss and a dict of scalar diagnostics (`loss` and the
      coupling's info, e.g. `cost_before`, `cost_after`).
    """
    k_couple, k_t, k_eps = jax.random.split(key, 3)
    x0, x1, info = self.coupling(k_couple, x0, x1)
    if self.objective is not None:
      loss, aux = self.objective(apply_fn, params, jax.random.fold_in(k_t, 1), x0, x1)
      return loss, {**aux, **info}
    t = self.time_sampler(k_t, x0.shape[0], x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t, u_t = self.path.interpolate(x0, x1, t, eps)
    v = apply_fn(params, t, x_t)
    loss = jnp.mean(jnp.square(v - u_t))
    return loss, {"loss": loss, **info}


def make(name: str, sigma: float | None = None, time_sampler: str = "uniform",
         time_kwargs: dict[str, Any] | None = None, mesh=None, **coupling_kwargs) -> Method:
  """Builds a named method, e.g. `make("otcfm", sigma=0.0)`.

  Args:
    name: one of `NAMES`.
    sigma: noise level of the path (sigma_min for "fm"); None takes the method's
      default (`DEFAULT_SIGMA`). For "sbcfm" it also sets the entropic
      regularisation epsilon = 2 sigma^2 of the coupling. "rf" only takes 0.
    time_sampler: "uniform" or "logit_normal"; `time_kwargs` are its arguments.
    mesh: data-parallel mesh the batch is sharded over (None: one device);
      with `scope=` ("global" | "local") it says how the coupling pairs it.
    **coupling_kwargs: passed to the coupling (e.g. `solver=` for exact OT,
      `threshold=` for sb, `scope=`).
  """
  if name not in _SPEC:
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(NAMES)}")
  coupling_name, path_name, default_sigma = _SPEC[name]
  if name in ("rf", "meanflow") and sigma not in (None, 0, 0.0):
    raise ValueError(f"method {name!r} has sigma = 0, got sigma={sigma!r}; use 'icfm' for sigma > 0")
  sigma = default_sigma if sigma is None else sigma
  path_kwargs = {"sigma_min": sigma} if path_name == "lipman" else {"sigma": sigma}
  path = paths.make(path_name, **path_kwargs)
  if coupling_name == "sb":
    coupling_kwargs = {"sigma": sigma, **coupling_kwargs}
  coupling = couplings.make(coupling_name, mesh=mesh, **coupling_kwargs)
  sampler = timesteps.make(time_sampler, **(time_kwargs or {}))
  objective = None
  if name == "sf2m":
    objective = sf2m.SF2MLoss(path, sampler)
  elif name == "meanflow":
    objective = meanflow.MeanFlowLoss(path, meanflow.TimePairSampler())
  return Method(name=name, coupling=coupling, path=path, time_sampler=sampler, objective=objective)
