"""fm.likelihood against closed forms computed independently in float64 numpy.

- Gaussian to Gaussian (independent coupling, linear path): the marginal is
  N(t m, diag((1-t)^2 + t^2 s^2)) with velocity u = m + (sigma_t'/sigma_t)(x - t m).
- Affine field v = A x + b: x0 = e^{-A}(x1 + A^{-1} b) - A^{-1} b and
  log p1(x1) = log N(x0) - tr A.
- Hutchinson: for constant A each probe's estimate is e^T A e exactly, with
  known variance (Rademacher: sum_{i<j} (A_ij + A_ji)^2; Gaussian: 2 ||sym A||_F^2).
- Bits/dim: a density constant on each quantisation bin, so bpd = -mean log2 w[k].
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from fm import likelihood

A3 = np.random.default_rng(0).normal(size=(3, 3)) * 0.6
B3 = np.random.default_rng(1).normal(size=3)


def _key(seed):
  # rbg keys: the library takes any key; these compile much faster than threefry on CPU.
  return jax.random.key(seed, impl="rbg")


def _np_normal_logpdf(x):
  x = x.reshape(x.shape[0], -1)
  return -0.5 * np.sum(x**2, 1) - 0.5 * x.shape[1] * np.log(2 * np.pi)


def _affine_closed_form(x1, a, b):
  """x0 and log p1(x1) for v = A x + b, p0 = N(0, I)."""
  c = np.linalg.solve(a, b)
  x0 = (x1 + c) @ scipy.linalg.expm(-a).T - c
  return x0, _np_normal_logpdf(x0) - np.trace(a)


def _affine_field(a, b, dtype):
  a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  return lambda t, x: x @ a.T + b


def test_gaussian_to_gaussian_exact():
  """Diagonal Gaussian target on [B, 2, 3] data, float64, tolerances 1e-7: within 1e-4."""
  rng = np.random.default_rng(11)
  with jax.enable_x64(True):
    m = rng.normal(size=(2, 3))
    s = np.exp(rng.normal(size=(2, 3)) * 0.5)
    mj, s2 = jnp.asarray(m), jnp.asarray(s**2)

    def v(t, x):
      var = (1 - t) ** 2 + t**2 * s2
      return mj + (t * s2 - (1 - t)) / var * (x - t * mj)

    x1 = m + s * rng.normal(size=(16, 2, 3))
    logp, info = likelihood.log_prob(v, jnp.asarray(x1), rtol=1e-7, atol=1e-7)
    z = (x1 - m) / s
    want = _np_normal_logpdf(z) - np.sum(np.log(s))
    np.testing.assert_allclose(np.asarray(logp), want, atol=1e-4, rtol=0)
    assert bool(info["success"]) and info["div_estimator"] == "exact"


def test_gaussian_to_gaussian_float32():
  """Same flow in float32, tolerances 1e-6: within 1e-4 (1e-5 gives ~2e-4 on log p ~ -5)."""
  rng = np.random.default_rng(12)
  m, s = np.array([1.5, -0.5]), np.array([0.5, 2.0])
  mj, s2 = jnp.asarray(m, jnp.float32), jnp.asarray(s**2, jnp.float32)

  def v(t, x):
    var = (1 - t) ** 2 + t**2 * s2
    return mj + (t * s2 - (1 - t)) / var * (x - t * mj)

  x1 = m + s * rng.normal(size=(32, 2))
  logp, _ = likelihood.log_prob(v, jnp.asarray(x1, jnp.float32), rtol=1e-6, atol=1e-6)
  want = _np_normal_logpdf((x1 - m) / s) - np.sum(np.log(s))
  np.testing.assert_allclose(np.asarray(logp), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("solver,steps,tol", [("dopri5", None, 1e-6), ("rk4", 40, 1e-5)])
def test_affine_flow_exact(solver, steps, tol):
  rng = np.random.default_rng(13)
  with jax.enable_x64(True):
    x1 = rng.normal(size=(8, 3))
    v = _affine_field(A3, B3, jnp.float64)
    logp, info = likelihood.log_prob(v, jnp.asarray(x1), solver=solver, steps=steps, rtol=1e-8, atol=1e-8)
    x0, want = _affine_closed_form(x1, A3, B3)
    np.testing.assert_allclose(np.asarray(info["x0"]), x0, atol=tol)
    np.testing.assert_allclose(np.asarray(logp), want, atol=tol)
    np.testing.assert_allclose(np.asarray(info["delta_logp"]), -np.trace(A3), atol=tol)


def test_exact_divergence_is_per_sample():
  """A nonlinear field with a different Jacobian per sample: trace vs per-sample jacfwd."""
  rng = np.random.default_rng(14)
  w = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  f = lambda x: jnp.tanh(x @ w) * x[:, ::-1] + jnp.sin(x)
  x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  basis = jnp.broadcast_to(jnp.eye(4)[:, None, :], (4, 5, 4))  # [D, B, D]: e_i for every sample
  y, div = jax.jit(lambda x: likelihood.divergence_fn(f, x, basis, "sum"))(x)
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda u: f(u[None])[0])))(x)  # [B, 4, 4]
  want = np.trace(np.asarray(jac), axis1=1, axis2=2)
  np.testing.assert_allclose(np.asarray(div), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y), np.asarray(f(x)), rtol=1e-6, atol=1e-6)


def _hutchinson_batch(probe, num_probes, n=2048):
  """n copies of one point, each with its own probes: n iid estimates of log p1."""
  rng = np.random.default_rng(15)
  x1 = np.tile(rng.normal(size=(1, 3)), (n, 1))
  v = _affine_field(A3, B3, jnp.float32)
  logp, info = likelihood.log_prob(
    v, jnp.asarray(x1, jnp.float32), key=_key(7), divergence="hutchinson", probe=probe,
    num_probes=num_probes)
  return np.asarray(logp, np.float64), _affine_closed_form(x1[:1], A3, B3)[1][0], info


@pytest.mark.parametrize("probe,p", [("rademacher", 1), ("rademacher", 8), ("gaussian", 1)])
def test_hutchinson_unbiased_with_known_variance(probe, p):
  sym = (A3 + A3.T) / 2
  iu = np.triu_indices(3, 1)
  var = np.sum((2 * sym[iu]) ** 2) if probe == "rademacher" else 2 * np.sum(sym**2)
  est, exact, info = _hutchinson_batch(probe, p)
  se = est.std(ddof=1) / math.sqrt(est.shape[0])
  assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
  # averaging p probes divides the variance by p (rel. s.e. of a variance ~ 3-6% here)
  assert 0.8 < est.var(ddof=1) / (var / p) < 1.25, (est.var(ddof=1), var / p)
  assert info["div_estimator"] == f"hutchinson-{probe}-{p}"


class Counted:
  """Wraps a field; every executed forward call increments a host-side counter."""

  def __init__(self, f):
    self.f, self.calls = f, 0

  def _tick(self, t):
    self.calls += 1

  def __call__(self, t, x):
    jax.debug.callback(self._tick, t, ordered=True)
    return self.f(t, x)


@pytest.mark.parametrize(
  "divergence,solver,steps",
  [("exact", "dopri5", None), ("hutchinson", "dopri5", None), ("hutchinson", "rk4", 5)],
)
def test_nfe_matches_runtime_count(divergence, solver, steps):
  rng = np.random.default_rng(16)
  v = Counted(_affine_field(A3, B3, jnp.float32))
  x1 = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  _, info = likelihood.log_prob(
    v, x1, key=_key(0), divergence=divergence, num_probes=3, solver=solver, steps=steps)
  jax.effects_barrier()
  assert int(info["nfe"]) == v.calls > 0
  if steps:
    assert v.calls == 4 * steps


def _binned_log_density(w, d):
  """log p(y) of a density on [-1, 1)^d constant on the 256 bins of width 1/128 per axis."""
  logw = jnp.log(jnp.asarray(w))

  def log_p(y):
    k = jnp.clip(jnp.floor((y + 1.0) * 128.0), 0, 255).astype(jnp.int32)
    return jnp.sum(logw[k] + math.log(128.0), axis=tuple(range(1, y.ndim)))

  return log_p


def test_bits_per_dim_uniform_is_eight():
  rng = np.random.default_rng(17)
  images = jnp.asarray(rng.integers(0, 256, size=(3, 4, 4, 3)), jnp.uint8)
  uniform = lambda y: jnp.full(y.shape[:1], -math.prod(y.shape[1:]) * math.log(2.0))
  bpd, info = likelihood.bits_per_dim(lambda t, x: jnp.zeros_like(x), images, key=_key(0), log_p0=uniform)
  np.testing.assert_allclose(np.asarray(bpd), 8.0, atol=1e-5)
  assert info["log_prob"].shape == (3,)


def test_bits_per_dim_of_binned_density_through_a_flow():
  """v = c x carries the binned density q from t = 0 to 1 once log_p0(x0) = log q(e^c x0) + D c;
  its bits/dim are -mean_d log2 w[k_d] whatever the dequantisation noise."""
  rng = np.random.default_rng(18)
  with jax.enable_x64(True):
    w = rng.random(256) + 0.05
    w /= w.sum()
    c = 0.3
    images = rng.integers(0, 256, size=(4, 2, 3, 2))
    log_q = _binned_log_density(w, 12)
    log_p0 = lambda x0: log_q(jnp.exp(c) * x0) + 12 * c
    bpd, info = likelihood.bits_per_dim(
      lambda t, x: c * x, jnp.asarray(images, jnp.uint8), key=_key(3), divergence="exact",
      log_p0=log_p0, dtype=jnp.float64, rtol=1e-10, atol=1e-10)
    want = -np.log2(w[images]).reshape(4, -1).mean(1)
    np.testing.assert_allclose(np.asarray(bpd), want, atol=1e-8)
    np.testing.assert_allclose(np.asarray(info["delta_logp"]), -12 * c, atol=1e-8)


def test_errors():
  x = jnp.zeros((2, 3))
  v = lambda t, x: x
  with pytest.raises(ValueError, match="divergence"):
    likelihood.log_prob(v, x, divergence="trace")
  with pytest.raises(ValueError, match="probe"):
    likelihood.log_prob(v, x, key=_key(0), divergence="hutchinson", probe="sphere")
  with pytest.raises(ValueError, match="key"):
    likelihood.log_prob(v, x, divergence="hutchinson")
  with pytest.raises(ValueError, match="num_probes"):
    likelihood.log_prob(v, x, key=_key(0), divergence="hutchinson", num_probes=0)
  with pytest.raises(ValueError, match="uint8"):
    likelihood.bits_per_dim(v, jnp.zeros((2, 4, 4, 3)), key=_key(0))
