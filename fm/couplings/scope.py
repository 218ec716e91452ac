"""Couplings over a data-parallel mesh: pair the global batch, or pair within each device's shard.

With the batch `[B, *shape]` sharded over the mesh axis:

* "global" (default): x0 and x1 are gathered to every device (an all-gather
  of `2 x [B, d]`), the coupling is solved once over the whole batch (a host
  solver runs once, on the first device, and its `[B]` permutation is
  broadcast; on-device solvers run the same replicated computation on every
  device), and the indices are sliced back to the batch's shards. A run on 4
  devices pairs exactly as a run on 1 device with the same global batch.
* "local": each device couples its own `B / n` rows in `shard_map` (TorchCFM's
  DDP behaviour): no communication, `n` problems of size `B / n` instead of one
  of size `B` (exact OT costs ~(B/n)^2 to (B/n)^3 each), but the pairing is
  only optimal within shards. Device i draws from `fold_in(key, i)` (with one
  device, `key` itself, so "local" on one device equals "global").

Both return global indices `(i0, i1)` `[B]`, sharded like the batch, which
`fm.couplings.apply` applies to the sharded batch. Under "local" every index
points into its own device's shard (checked by the 4-device test); XLA cannot
know that, so the gather may move the `2 x [B, d]` batch between devices.

Diagnostics of "local" are averaged over devices (costs), AND-ed (flags) or
maxed (iteration counts).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["SCOPES", "Scoped"]

SCOPES = ("global", "local")


def _combine(info: dict[str, jax.Array], axis: str) -> dict[str, jax.Array]:
  out = {}
  for k, v in info.items():
    v = jnp.asarray(v)
    if v.dtype == jnp.bool_:
      out[k] = jax.lax.pmin(v.astype(jnp.int32), axis).astype(jnp.bool_)
    elif jnp.issubdtype(v.dtype, jnp.integer):
      out[k] = jax.lax.pmax(v, axis)
    else:
      out[k] = jax.lax.pmean(v, axis)
  return out


@dataclasses.dataclass(frozen=True)
class Scoped:
  """`coupling` applied to a batch sharded along `axis` of `mesh`, with `scope` in `SCOPES`."""

  coupling: Any
  mesh: Mesh
  scope: str = "global"
  axis: str = "data"

  def __post_init__(self):
    if self.scope not in SCOPES:
      raise ValueError(f"unknown coupling scope {self.scope!r}; valid: {', '.join(SCOPES)}")

  def plan(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    return self.coupling.plan(x0, x1)

  def __call__(self, key: jax.Array, x0: jax.Array, x1: jax.Array, y1: jax.Array | None = None):
    shards = NamedSharding(self.mesh, P(self.axis))
    args = (x0, x1) if y1 is None else (x0, x1, y1)  # the labels of x1 travel with it
    if self.scope == "global":
      whole = NamedSharding(self.mesh, P())
      args = tuple(jax.lax.with_sharding_constraint(x, whole) for x in args)
      i0, i1, info = self.coupling(key, *args)
      return (jax.lax.with_sharding_constraint(i0, shards),
              jax.lax.with_sharding_constraint(i1, shards), info)

    n = self.mesh.shape[self.axis]

    def per_device(key, x0, x1, *y1):
      i0, i1 = 0, 0
      if n > 1:
        d = jax.lax.axis_index(self.axis)
        key = jax.random.fold_in(key, d)
        i0, i1 = d * x0.shape[0], d * x1.shape[0]  # shard-local -> global indices
      j0, j1, info = self.coupling(key, x0, x1, *y1)
      return (j0 + i0).astype(jnp.int32), (j1 + i1).astype(jnp.int32), _combine(info, self.axis)

    spec = P(self.axis)
    # check_vma=False: solvers with data-dependent control flow (ott's Sinkhorn) do not carry
    # varying-axis annotations; the replicated outputs are the collectives of `_combine`.
    return jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(),) + (spec,) * len(args),
                         out_specs=(spec, spec, P()), check_vma=False)(key, *args)
