"""Log-likelihood of a flow by the CNF change of variables, and bits per dimension.

A velocity field `v(t, x)` that carries the source p0 (t = 0) to the data p1
(t = 1) gives the density along each trajectory by the instantaneous change of
variables (Chen et al. 2018, FFJORD):

    d/dt log p_t(x_t) = -div v(t, x_t),
    log p1(x1) = log p0(x0) - int_0^1 div v(t, x_t) dt.

`log_prob` integrates the augmented state (x, a), dx/dt = v, da/dt = div v,
backwards from t = 1 (x = x1, a = 0) to t = 0 with `fm.solvers.integrate`, so
a(0) = -int_0^1 div v dt and log p1(x1) = log p0(x0) + a(0). The divergence is
either exact (trace of the Jacobian, one vjp per dimension) or Hutchinson's
unbiased estimate e^T J e with probes held fixed along each trajectory.

`bits_per_dim` turns this into the bits/dim of 8-bit images under uniform
dequantisation (the bound used by FFJORD and Song et al. 2021).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from fm.solvers import integrate
from fm.solvers.fixed import VectorField

__all__ = [
  "DIVERGENCES",
  "PROBES",
  "log_prob",
  "bits_per_dim",
  "standard_normal_log_prob",
  "divergence_fn",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@jax.tree_util.register_static
class _Label(str):
  """A string that crosses `jax.jit` as static data (for `info["div_estimator"]`)."""


def standard_normal_log_prob(x: jax.Array) -> jax.Array:
  """log N(x; 0, I) `[B]` of `x` `[B, *shape]`, summed over the trailing axes."""
  x = x.reshape(x.shape[0], -1)
  d = x.shape[1]
  return -0.5 * jnp.sum(jnp.square(x), axis=1) - 0.5 * d * math.log(2.0 * math.pi)


def _probes(key, num_probes: int, probe: str, x: jax.Array) -> jax.Array:
  """`[P, B, *shape]` probe vectors with E[e e^T] = I, drawn independently per sample."""
  shape = (num_probes,) + x.shape
  if probe == "rademacher":
    return jax.random.rademacher(key, shape, dtype=x.dtype)
  return jax.random.normal(key, shape, dtype=x.dtype)


def _basis(x: jax.Array) -> jax.Array:
  """`[D, B, *shape]`: the D standard basis vectors, the same for every sample."""
  d = math.prod(x.shape[1:])
  eye = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
  return jnp.broadcast_to(eye, (d,) + x.shape)


def divergence_fn(f: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array, reduce: str):
  """`(f(x), div)`: one forward pass of f and one vjp per probe.

  The samples of the batch do not interact, so the Jacobian of the batched
  map is block diagonal and `sum(e * vjp(e))` over the trailing axes of each
  sample gives that sample's `e_b^T J_b e_b`.

  Args:
    f: `[B, *shape] -> [B, *shape]`, acting on each sample independently.
    x: `[B, *shape]`.
    probes: `[P, B, *shape]` probe vectors.
    reduce: "sum" (basis probes: the exact trace) or "mean" (Hutchinson).

  Returns:
    `(y, div)`: y `[B, *shape]`, div `[B]`.
  """
  y, pullback = jax.vjp(f, x)
  (rows,) = jax.vmap(pullback)(probes)  # [P, B, *shape]: e^T J per probe
  quad = jnp.sum((probes * rows).reshape(probes.shape[:2] + (-1,)), axis=2)  # [P, B]
  div = jnp.sum(quad, axis=0) if reduce == "sum" else jnp.mean(quad, axis=0)
  return y, div


def log_prob(
  v: VectorField,
  x1: jax.Array,
  *,
  key: jax.Array | None = None,
  divergence: str = "exact",
  solver: str = "dopri5",
  rtol: float = 1e-5,
  atol: float = 1e-5,
  steps: int | None = None,
  max_steps: int = 4096,
  log_p0: Callable[[jax.Array], jax.Array] | None = None,
  num_probes: int = 1,
  probe: str = "rademacher",
) -> tuple[jax.Array, dict]:
  """log p1(x1) `[B]` of the flow of `v`, by integrating from t = 1 to t = 0.

  Runs under a `jax.jit` made afresh on each call: one compile per eager
  call and never a stale trace of a closure `v`. For repeated calls (an
  evaluation loop) jit a wrapper that takes the params as arguments, e.g.
  `jax.jit(lambda p, x, k: log_prob(lambda t, y: f(p, t, y), x, key=k))`,
  inside which the inner jit is inlined (options are static).

  The integration state is x and the accumulated divergence packed as one
  `[B, D + 1]` array, so with dopri5 the whole batch shares one step size
  and the error norm is the RMS over all B (D + 1) components (as scipy's
  RK45 on the concatenated state in Song et al. 2021): per-sample values
  depend on the batch only at the level of the tolerance. `jax.vmap` over
  single-sample calls gives each sample its own step size.

  Cost: `info["nfe"]` counts evaluations of the augmented dynamics exactly
  (as `fm.solvers.integrate` counts calls of its field). Each evaluation is
  one forward pass of v plus, batched by `vmap` over the probes, D vjps
  ("exact", D = prod(shape): about 1 + 2D network passes, fine for toy and
  small D; memory grows with D) or `num_probes` vjps ("hutchinson": about
  1 + 2 num_probes passes).

  Args:
    v: velocity field `v(t, x) -> [B, *shape]`, t a scalar, x `[B, *shape]`;
    must act on each sample independently (no batch statistics).
    x1: `[B, *shape]` floating data points.
    key: PRNG key for the Hutchinson probes (unused for "exact").
    divergence: "exact" (trace of the Jacobian) or "hutchinson" (unbiased
    e^T J e, probes drawn once per sample and held fixed along the
    trajectory, averaged over `num_probes`).
    solver, rtol, atol, steps, max_steps: passed to `fm.solvers.integrate`.
    log_p0: source log density `[B, *shape] -> [B]`; default standard normal.
    num_probes: number of Hutchinson probes per sample.
    probe: "rademacher" or "gaussian".

  Returns:
    `(logp, info)`: logp `[B]`; info holds int32 scalars `nfe`, `steps`,
    `rejected`, bool `success`, `x0` `[B, *shape]` (the source points),
    `delta_logp` `[B]` (= -int_0^1 div v dt) and `div_estimator`, a static
    string ("exact" or e.g. "hutchinson-rademacher-4").
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"unknown divergence {divergence!r}; valid choices: {', '.join(DIVERGENCES)}")
  if probe not in PROBES:
    raise ValueError(f"unknown probe {probe!r}; valid choices: {', '.join(PROBES)}")
  if int(num_probes) != num_probes or num_probes < 1:
    raise ValueError(f"num_probes must be a positive int, got {num_probes!r}")
  x1 = jnp.asarray(x1)
  if not jnp.issubdtype(x1.dtype, jnp.floating) or x1.ndim < 2:
    raise ValueError(f"x1 must be a floating [B, *shape] array, got {x1.dtype} {x1.shape}")
  if divergence == "hutchinson" and key is None:
    raise ValueError("divergence='hutchinson' needs a PRNG key: pass key=...")
  b, d = x1.shape[0], math.prod(x1.shape[1:])
  if divergence == "exact":
    reduce, label = "sum", "exact"
  else:
    reduce, label = "mean", f"hutchinson-{probe}-{int(num_probes)}"

  # A fresh jit per call: one compile when called eagerly, inlined under an
  # outer jit, and never a stale trace of a closure `v`.
  @jax.jit
  def run(x1, key):
    probes = _basis(x1) if divergence == "exact" else _probes(key, int(num_probes), probe, x1)

    @jax.jit  # traced once, shared by all the stages of the solver
    def aug(t, z):
      x = z[:, :d].reshape(x1.shape)
      y, div = divergence_fn(lambda u: v(t, u), x, probes, reduce)
      return jnp.concatenate([y.reshape(b, d), div[:, None]], axis=1).astype(z.dtype)

    z1 = jnp.concatenate([x1.reshape(b, d), jnp.zeros((b, 1), x1.dtype)], axis=1)
    z0, info = integrate(
      aug, z1, solver, t0=1.0, t1=0.0, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps
    )
    x0 = z0[:, :d].reshape(x1.shape)
    delta = z0[:, d]
    lp0 = standard_normal_log_prob(x0) if log_p0 is None else log_p0(x0)
    return lp0 + delta, dict(info, x0=x0, delta_logp=delta)

  logp, info = run(x1, key if divergence == "hutchinson" else None)
  return logp, dict(info, div_estimator=_Label(label))


def bits_per_dim(
  v: VectorField,
  images: jax.Array,
  *,
  key: jax.Array,
  divergence: str = "hutchinson",
  num_probes: int = 1,
  dtype=jnp.float32,
  **kwargs,
) -> tuple[jax.Array, dict]:
  """Bits per dimension `[B]` of 8-bit images under uniform dequantisation.

  Map (the dequantisation of Song et al. 2021, score_sde): with k in
  {0..255} and u ~ U[0, 1)^D drawn from `key`,

      y = 2 (k + u) / 256 - 1  in [-1, 1)^D,

  which is the model's [-1, 1] scale (fm stores images as k / 127.5 - 1;
  a dequantised point lies within 1/128 of it). The density of z = k + u
  in [0, 256)^D is p_z(z) = p1(y) |dy/dz|^D = p1(y) 2^{-7D}, and
  log P(k) >= E_u log p_z(k + u) (Jensen), so with D = H W C

      bpd = -log p_z / (D ln 2) = -log p1(y) / (D ln 2) + 7,

  an upper bound in expectation over u (a single u per image here; average
  over keys to reduce the Monte Carlo variance). Check: p1 uniform on
  [-1, 1]^D gives log p1 = -D ln 2 and bpd = 8 = log2(256).

  Args:
    v: velocity field as in `log_prob`.
    images: `[B, H, W, C]` (or any `[B, *shape]`) uint8 array.
    key: PRNG key, split between the dequantisation noise and the probes.
    divergence, num_probes: as in `log_prob` (default Hutchinson, 1 probe).
    dtype: floating dtype of the dequantised data.
    **kwargs: further `log_prob` options (solver, rtol, atol, steps,
    log_p0, probe, max_steps).

  Returns:
    `(bpd, info)`: bpd `[B]`; info is `log_prob`'s info plus `log_prob`
    `[B]` (log p1(y) in [-1, 1] units).
  """
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}")
  d = math.prod(images.shape[1:])

  @jax.jit  # one compile for the whole evaluation (see log_prob)
  def run(images, key):
    k_u, k_probe = jax.random.split(key)
    u = jax.random.uniform(k_u, images.shape, dtype)
    y = 2.0 * (images.astype(dtype) + u) / 256.0 - 1.0
    logp, info = log_prob(v, y, key=k_probe, divergence=divergence, num_probes=num_probes, **kwargs)
    return -logp / (d * math.log(2.0)) + 7.0, dict(info, log_prob=logp)

  return run(images, key)
