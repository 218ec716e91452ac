"""info["nfe"] equals a runtime count of calls of v (host callback under jit)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm.solvers import FIXED_STEP, SOLVERS, TABLEAUX, integrate


class Counted:
  """Wraps a field; every executed call of v increments a host-side counter."""

  def __init__(self, f):
    self.f, self.calls = f, 0

  def _tick(self, t):
    self.calls += 1

  def __call__(self, t, x):
    jax.debug.callback(self._tick, t, ordered=True)
    return self.f(t, x)


def _field(t, x):
  return -2.0 * x + jnp.sin(4.0 * t) * jnp.roll(x, 1, axis=-1)


X0 = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)


def _run(v, name, **kw):
  out = jax.jit(lambda x: integrate(v, x, name, **kw))(X0)
  jax.effects_barrier()
  return out


@pytest.mark.parametrize("name", SOLVERS)
def test_nfe_matches_runtime_count(name):
  v = Counted(_field)
  kw = {"steps": 7} if name in FIXED_STEP else {"rtol": 1e-6, "atol": 1e-6}
  _, info = _run(v, name, **kw)
  assert int(info["nfe"]) == v.calls > 0
  if name in FIXED_STEP:
    assert v.calls == 7 * TABLEAUX[name].stages
    assert int(info["steps"]) == 7 and int(info["rejected"]) == 0


@pytest.mark.parametrize("name,stages", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_nfe_formula(name, stages):
  for steps in (1, 5, 32):
    _, info = integrate(_field, X0, name, steps=steps)
    assert int(info["nfe"]) == steps * stages


@pytest.mark.parametrize("dt0", [None, 1.0])
def test_dopri5_nfe_with_rejections(dt0):
  # fast relaxation onto a moving target: dt0=1.0 is far too large, and the
  # tight tolerance forces step-size corrections along the way.
  def stiffish(t, x):
    return -60.0 * (x - jnp.cos(10.0 * t))

  v = Counted(stiffish)
  _, info = _run(v, "dopri5", rtol=1e-7, atol=1e-7, dt0=dt0)
  steps, rej = int(info["steps"]), int(info["rejected"])
  assert rej > 0
  assert int(info["nfe"]) == v.calls
  # FSAL accounting: 1 initial + 1 probe (if dt0 is None) + 6 per attempted step
  assert v.calls == 1 + (dt0 is None) + 6 * (steps + rej)
  assert bool(info["success"])


def test_dopri5_max_steps_stops_without_raising():
  v = Counted(_field)
  x1, info = _run(v, "dopri5", rtol=1e-10, atol=1e-10, max_steps=3)
  assert not bool(info["success"])
  assert int(info["steps"]) + int(info["rejected"]) == 3
  assert int(info["nfe"]) == v.calls == 2 + 6 * 3
  assert np.all(np.isfinite(np.asarray(x1)))


def test_dopri5_save_at_nfe_counts():
  v = Counted(_field)
  _, info = _run(v, "dopri5", save_at=jnp.linspace(0.0, 1.0, 11))
  assert int(info["nfe"]) == v.calls == 2 + 6 * (int(info["steps"]) + int(info["rejected"]))
  assert int(info["steps"]) >= 10  # every save time is a step end
