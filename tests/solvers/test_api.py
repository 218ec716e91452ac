"""integrate(): trajectories, shapes, vmap, tracing, argument validation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import fm
from fm.solvers import FIXED_STEP, SOLVERS, integrate

A = np.array([[-0.5, 1.5], [-1.5, -0.5]])


def _linear(t, x):
  return x @ jnp.asarray(A, x.dtype).T


X0 = jnp.asarray(np.random.default_rng(2).normal(size=(5, 2)), jnp.float32)


def test_exposed_on_package():
  assert fm.solvers.integrate is integrate
  assert fm.solvers.SOLVERS == ("euler", "midpoint", "heun", "rk4", "dopri5")


@pytest.mark.parametrize("name", FIXED_STEP)
def test_save_trajectory_fixed(name):
  x1, info = jax.jit(lambda x: integrate(_linear, x, name, steps=10, save_trajectory=True))(X0)
  traj = info["trajectory"]
  assert traj.shape == (11, 5, 2) and info["ts"].shape == (11,)
  np.testing.assert_array_equal(traj[0], X0)
  np.testing.assert_array_equal(traj[-1], x1)
  np.testing.assert_allclose(info["ts"], np.linspace(0, 1, 11), atol=1e-6)
  # grid state k equals integrating the first k steps on [0, k/10]
  xk, _ = integrate(_linear, X0, name, t1=0.3, steps=3)
  np.testing.assert_allclose(traj[3], xk, atol=1e-6)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_save_at_fixed_on_grid(name):
  save = jnp.array([0.0, 0.25, 0.5, 1.0])
  x1, info = integrate(_linear, X0, name, steps=8, save_at=save)
  _, full = integrate(_linear, X0, name, steps=8, save_trajectory=True)
  assert info["trajectory"].shape == (4, 5, 2)
  np.testing.assert_array_equal(info["trajectory"], full["trajectory"][jnp.array([0, 2, 4, 8])])
  np.testing.assert_array_equal(info["trajectory"][-1], x1)
  with pytest.raises(ValueError, match="grid"):
    integrate(_linear, X0, name, steps=8, save_at=jnp.array([0.3]))


@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0)])
def test_save_at_dopri5(t0, t1):
  save = jnp.linspace(t0, t1, 5)
  f = jax.jit(lambda x: integrate(_linear, x, "dopri5", t0=t0, t1=t1, rtol=1e-6, atol=1e-6, save_at=save))
  x1, info = f(X0)
  traj = np.asarray(info["trajectory"])
  assert traj.shape == (5, 5, 2)
  np.testing.assert_array_equal(traj[0], X0)
  np.testing.assert_array_equal(traj[-1], x1)
  for s, xs in zip(np.asarray(save), traj):
    exact = np.asarray(X0) @ scipy.linalg.expm(A * (s - t0)).T
    np.testing.assert_allclose(xs, exact, atol=1e-4)
  # save times in the middle and repeated ones
  save2 = jnp.array([t0, t0, 0.5, 0.5, t1])
  _, info2 = integrate(_linear, X0, "dopri5", t0=t0, t1=t1, save_at=save2)
  np.testing.assert_array_equal(info2["trajectory"][0], info2["trajectory"][1])
  np.testing.assert_array_equal(info2["trajectory"][2], info2["trajectory"][3])


@pytest.mark.parametrize("name", SOLVERS)
def test_image_shaped_state(name):
  x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4))

  def v(t, x):  # x' = -(1 + t) x  ->  x(1) = exp(-1.5) x0
    return -(1.0 + t) * x

  kw = {"steps": 50} if name in FIXED_STEP else {}
  x1, info = jax.jit(lambda x: integrate(v, x, name, **kw))(x0)
  assert x1.shape == x0.shape
  tol = {"euler": 1e-2, "midpoint": 1e-3, "heun": 1e-3}.get(name, 1e-4)
  np.testing.assert_allclose(x1, np.exp(-1.5) * x0, atol=tol)


@pytest.mark.parametrize("name", ["rk4", "dopri5"])
def test_vmap_over_initial_conditions(name):
  kw = {"steps": 20} if name == "rk4" else {"rtol": 1e-6, "atol": 1e-6}
  xs = X0[:, None, :]  # 5 independent problems with batch 1
  x1s, info = jax.jit(jax.vmap(lambda x: integrate(_linear, x, name, **kw)))(xs)
  assert x1s.shape == (5, 1, 2) and info["nfe"].shape == (5,)
  exact = np.asarray(X0) @ scipy.linalg.expm(A).T
  np.testing.assert_allclose(x1s[:, 0], exact, atol=1e-4)


def test_vmap_over_params_and_traced_times():
  @jax.jit
  def run(scale, t1):
    return integrate(lambda t, x: scale * x, X0, "dopri5", t1=t1, rtol=1e-7, atol=1e-7)[0]

  scales = jnp.array([-1.0, 0.5])
  out = jax.vmap(run, in_axes=(0, None))(scales, 0.5)
  exact = np.exp(np.asarray(scales) * 0.5)[:, None, None] * np.asarray(X0)
  np.testing.assert_allclose(out, exact, rtol=1e-5)


@pytest.mark.parametrize("name", SOLVERS)
def test_compiles_once(name):
  kw = {"steps": 5} if name in FIXED_STEP else {}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(w, x0):
    return integrate(lambda t, x: w * x, x0, name, **kw)

  for i in range(3):
    run(jnp.float32(-0.1 * i), X0 + i)
  chex.clear_trace_counter()


def test_bad_arguments():
  with pytest.raises(ValueError, match="'rk45'.*euler, midpoint, heun, rk4, dopri5"):
    integrate(_linear, X0, "rk45", steps=3)
  with pytest.raises(ValueError, match="steps"):
    integrate(_linear, X0, "rk4")
  with pytest.raises(ValueError, match="steps"):
    integrate(_linear, X0, "euler", steps=0)
  with pytest.raises(ValueError, match="adaptive"):
    integrate(_linear, X0, "dopri5", steps=10)
  with pytest.raises(ValueError, match="ordered"):
    integrate(_linear, X0, "dopri5", save_at=jnp.array([0.5, 0.2]))
  with pytest.raises(ValueError, match="within"):
    integrate(_linear, X0, "dopri5", save_at=jnp.array([0.5, 1.5]))
  with pytest.raises(ValueError, match="floating"):
    integrate(_linear, jnp.ones((2, 2), jnp.int32), "euler", steps=2)


@pytest.mark.parametrize("name", SOLVERS)
def test_degenerate_inputs(name):
  kw = {"steps": 3} if name in FIXED_STEP else {}
  x1, info = integrate(_linear, X0, name, t0=0.5, t1=0.5, **kw)
  np.testing.assert_array_equal(x1, X0)
  assert bool(info["success"])
  _, info = integrate(_linear, X0, name, save_at=jnp.zeros((0,)), **kw)
  assert info["trajectory"].shape == (0, 5, 2)
  with pytest.raises(ValueError, match="1D"):
    integrate(_linear, X0, name, save_at=jnp.float32(0.5), **kw)


@pytest.mark.parametrize("rtol,atol", [(0.0, 0.0), (-1.0, 1e-5), (float("nan"), 1e-5), (1e-5, float("inf"))])
def test_dopri5_refuses_degenerate_tolerances(rtol, atol):
  """rtol = atol = 0 (or < 0, NaN) never accepts a step: dopri5 would return x0 after max_steps steps."""
  with pytest.raises(ValueError, match="tol must be a finite number > 0"):
    fm.solvers.integrate(lambda t, x: -x, jnp.ones((2, 2)), solver="dopri5", rtol=rtol, atol=atol)
