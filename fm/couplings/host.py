"""`host_call`: a NumPy function called from jitted code, safe inside multi-device programs.

`jax.pure_callback` hands its callback `jax.Array`s that it first `device_put`s
onto the CPU device. On the CPU backend with several (forced) devices that copy
can need a thread of the pool that runs the devices' programs; when every other
device's thread is waiting in a collective for the callback's result (the
all-reduce that broadcasts it), nothing is left to run the copy and the
program aborts after XLA's 40 s rendezvous timeout. `host_call` lowers to the
same XLA host callback but passes the operands to `fn` as NumPy arrays (no JAX
dispatch on the host), so it cannot wait on the device pool.

Placement, as for `pure_callback`: in a jitted (automatically partitioned)
program `fn` runs ONCE, on the first device of the program, and its result is
broadcast to the others; inside `shard_map` (all axes manual) it runs once per
device on that device's block. Under `vmap` it is called once per batch element.
Not differentiable (its results are integer permutations in `fm.couplings`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import batching, mlir

__all__ = ["host_call"]

_host_call_p = jex_core.Primitive("fm_host_call")
_host_call_p.multiple_results = True


def host_call(fn: Callable[..., np.ndarray], out: jax.ShapeDtypeStruct, *args: jax.Array) -> jax.Array:
  """`fn(*numpy args) -> numpy [out.shape] out.dtype`, called on the host from traced code."""
  out_aval = jax.core.ShapedArray(tuple(out.shape), np.dtype(out.dtype))
  return _host_call_p.bind(*map(jnp.asarray, args), fn=_Fn(fn), out_aval=out_aval)[0]


class _Fn:
  """Hashable by identity of the wrapped function (primitive params must hash)."""

  def __init__(self, fn):
    self.fn = fn

  def __hash__(self):
    return hash(self.fn)

  def __eq__(self, other):
    return isinstance(other, _Fn) and other.fn is self.fn


def _run(fn: _Fn, out_aval, *args):
  res = np.asarray(fn.fn(*(np.asarray(a) for a in args)))
  if res.shape != out_aval.shape:
    raise RuntimeError(f"host_call: {fn.fn!r} returned shape {res.shape}, expected {out_aval.shape}")
  return res.astype(out_aval.dtype, copy=False)


def _impl(*args, fn, out_aval):
  return [jnp.asarray(_run(fn, out_aval, *(np.asarray(a) for a in args)))]


def _abstract_eval(*avals, fn, out_aval):
  del avals, fn
  return [out_aval]


def _lowering(ctx, *operands, fn, out_aval):
  from jax._src import callback as jax_callback  # pylint: disable=g-import-not-at-top
  # The placement pure_callback uses: maximal (device 0) under automatic
  # partitioning, manual (per device) inside shard_map, none on one device.
  sharding = jax_callback._callback_op_sharding(  # pylint: disable=protected-access
      ctx.module_context.axis_context, None, ctx.avals_out)

  def callback(*np_args):
    return (_run(fn, out_aval, *np_args),)

  results, _, _ = mlir.emit_python_callback(
      ctx, callback, None, list(operands), ctx.avals_in, ctx.avals_out,
      has_side_effect=False, returns_token=False, sharding=sharding)
  return results


def _batch(args, dims, *, fn, out_aval):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  moved = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size, *a.shape))
           for a, d in zip(args, dims)]
  one = functools.partial(_host_call_p.bind, fn=fn, out_aval=out_aval)
  return [jax.lax.map(lambda xs: one(*xs)[0], tuple(moved))], [0]


_host_call_p.def_impl(_impl)
_host_call_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_host_call_p, _lowering, cacheable=False)
batching.primitive_batchers[_host_call_p] = _batch
