"""Minibatch couplings: re-pair (x0, x1) batches before building paths.

    plan = fm.couplings.plan(x0, x1, method="exact")        # [n, m], sums to 1
    couple = fm.couplings.make("sinkhorn", relative=0.05)
    i0, i1, info = couple(key, x0, x1)                      # [B] int32 each
    x0, x1 = fm.couplings.apply(i0, i1, x0, x1)             # any pytrees: (x1, labels), ...

Cost: squared Euclidean distance between flattened samples `[B, *shape]`.
"""
import dataclasses
from typing import Any, Callable, Dict

import jax

from fm.couplings import base, condition, exact, partial, scope, sinkhorn, unbalanced
from fm.couplings.auction import auction
from fm.couplings.condition import CONDITIONS, WithinClass
from fm.couplings.base import Independent, apply, gather, pair_cost, sqdist
from fm.couplings.exact import Exact, assignment, assignment_points, exact_plan
from fm.couplings.partial import Partial
from fm.couplings.scope import SCOPES, Scoped
from fm.couplings.sinkhorn import SB, Sinkhorn
from fm.couplings.unbalanced import Unbalanced

__all__ = [
    "NAMES", "SCOPES", "CONDITIONS", "WithinClass", "make", "plan", "Independent", "Exact", "Sinkhorn", "SB", "Unbalanced", "Partial", "Scoped",
    "assignment", "assignment_points", "exact_plan", "auction", "sqdist", "pair_cost", "apply", "gather",
]

_REGISTRY: Dict[str, Callable[..., Any]] = {
    "independent": Independent,
    "exact": Exact,
    "sinkhorn": Sinkhorn,
    "sb": SB,
    "unbalanced": Unbalanced,
    "partial": Partial,
}
NAMES = tuple(_REGISTRY)


def make(name: str, scope: str = "global", mesh=None, condition: str = "none", **kwargs: Any):
  """Build a coupling `couple(key, x0, x1, y1=None) -> (i0, i1, info)` by name (apply with `apply`).

  `scope` ("global" or "local", see `fm.couplings.scope`) says how a batch
  sharded over the data axis of `mesh` is paired; without a mesh the batch is
  one shard and both scopes are the plain coupling. `condition` ("none" or
  "within_class", see `fm.couplings.condition`): with "within_class" the
  labels `y1` of x1 are required and pairs never cross classes.

  Raises:
    ValueError: unknown `name`, scope or keyword (the message lists valid choices).
  """
  if scope not in SCOPES:
    raise ValueError(f"unknown coupling scope {scope!r}; valid: {', '.join(SCOPES)}")
  if condition not in CONDITIONS:
    raise ValueError(f"unknown coupling condition {condition!r}; valid: {', '.join(CONDITIONS)}")
  if name not in _REGISTRY:
    raise ValueError(f"unknown coupling {name!r}; valid choices: {NAMES}")
  cls = _REGISTRY[name]
  valid = tuple(f.name for f in dataclasses.fields(cls))
  if name == "sb":
    valid = tuple(v for v in valid if v not in ("epsilon", "relative"))
  bad = [k for k in kwargs if k not in valid]
  if bad:
    raise ValueError(
        f"unknown argument(s) {bad} for coupling {name!r}; valid: {valid} (and for every coupling: scope, "
        f"condition)")
  coupling = cls(**kwargs)
  if condition == "within_class":
    coupling = WithinClass(coupling)
  if mesh is None or name == "independent":
    return coupling
  return Scoped(coupling, mesh, scope)


def plan(x0: jax.Array, x1: jax.Array, method: str = "exact", **kwargs: Any) -> jax.Array:
  """Dense coupling plan `[n, m]` (sums to 1) for `method` in `NAMES`.

  `kwargs` as in `make` (e.g. `epsilon=0.5` for "sinkhorn", `solver=` for
  "exact", `sigma=` for "sb", `reg_m=` for "unbalanced", `mass=` for "partial").
  The unbalanced plan's mass is not 1.
  """
  return make(method, **kwargs).plan(x0, x1)
