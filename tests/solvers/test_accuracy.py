"""Accuracy against independent solutions: expm for y' = A y, scipy DOP853 otherwise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from fm.solvers import FIXED_STEP, TABLEAUX, integrate

# rotation + decay blocks, plus a coupling
A = np.array(
  [
    [-0.3, 2.0, 0.0, 0.1],
    [-2.0, -0.3, 0.0, 0.0],
    [0.0, 0.5, -1.0, 1.0],
    [0.0, 0.0, -0.7, -0.2],
  ]
)
X0 = np.random.default_rng(0).normal(size=(6, 4))


def _linear(t, x):
  return x @ jnp.asarray(A, x.dtype).T


def _nonautonomous(t, x):  # exercises the nodes c
  return x @ jnp.asarray(A, x.dtype).T + jnp.sin(3.0 * t) + t**2


def _reference(f, x0, t0, t1):
  sol = scipy.integrate.solve_ivp(
    lambda t, y: np.asarray(f(t, y.reshape(x0.shape))).ravel(),
    (t0, t1), x0.ravel(), method="DOP853", rtol=1e-13, atol=1e-13,
  )
  return sol.y[:, -1].reshape(x0.shape)


def _slope(errs, steps):
  return np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errs), 1)[0]


@pytest.mark.parametrize("name", FIXED_STEP)
@pytest.mark.parametrize("field", ["linear", "nonautonomous"])
def test_fixed_step_convergence_order(name, field):
  order = TABLEAUX[name].order
  steps = [8, 16, 32, 64] if order < 4 else [4, 8, 16, 32]
  with jax.enable_x64(True):
    if field == "linear":
      v = _linear
      exact = X0 @ scipy.linalg.expm(A).T
    else:
      v = _nonautonomous
      exact = _reference(lambda t, y: np.asarray(_nonautonomous(t, jnp.asarray(y))), X0, 0.0, 1.0)
    run = jax.jit(lambda x0, n: integrate(v, x0, name, steps=n)[0], static_argnums=1)
    errs = [float(np.max(np.abs(np.asarray(run(jnp.asarray(X0), n)) - exact))) for n in steps]
  assert abs(_slope(errs, steps) - order) < 0.2, errs


@pytest.mark.parametrize("tol", [1e-6, 1e-8])
def test_dopri5_matches_expm(tol):
  with jax.enable_x64(True):
    x1, info = jax.jit(lambda x: integrate(_linear, x, "dopri5", rtol=tol, atol=tol))(jnp.asarray(X0))
    x1 = np.asarray(x1)
  assert bool(info["success"])
  err = np.max(np.abs(x1 - X0 @ scipy.linalg.expm(A).T))
  assert err < 100 * tol, err


def test_dopri5_nonautonomous_and_time_interval():
  with jax.enable_x64(True):
    x1, info = integrate(_nonautonomous, jnp.asarray(X0), "dopri5", t0=0.5, t1=2.0, rtol=1e-8, atol=1e-8)
    ref = _reference(lambda t, y: np.asarray(_nonautonomous(t, jnp.asarray(y))), X0, 0.5, 2.0)
  np.testing.assert_allclose(np.asarray(x1), ref, atol=1e-6)


@pytest.mark.parametrize("name", ["dopri5", "rk4", "euler"])
def test_backwards_integration(name):
  kw = {"rtol": 1e-8, "atol": 1e-8} if name == "dopri5" else {"steps": 200}
  with jax.enable_x64(True):
    x0 = jnp.asarray(X0)
    x1, _ = integrate(_linear, x0, name, **kw)
    xb, info = integrate(_linear, x1, name, t0=1.0, t1=0.0, **kw)
    # direct check of the backward map: x(0) from x(1) is expm(-A)
    direct, _ = integrate(_linear, x0, name, t0=1.0, t1=0.0, **kw)
    x1, xb, direct = map(np.asarray, (x1, xb, direct))
  exact_back = X0 @ scipy.linalg.expm(-A).T
  tol = 1e-6 if name != "euler" else 0.2
  np.testing.assert_allclose(direct, exact_back, atol=tol * np.abs(exact_back).max())
  np.testing.assert_allclose(xb, X0, atol=tol)
  assert bool(info["success"])


def test_float32_default_dtype():
  x1, info = jax.jit(lambda x: integrate(_linear, x, "dopri5"))(jnp.asarray(X0, jnp.float32))
  assert x1.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(x1), X0 @ scipy.linalg.expm(A).T, atol=1e-3)
