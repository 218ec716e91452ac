"""Unbalanced and partial couplings against POT itself (tests/fixtures/pot_couplings.npz).

The fixture is written by experiments/fixtures/pot_couplings.py in the benchmark
environment: TorchCFM's calls `sinkhorn_knopp_unbalanced(a, b, M, reg, reg_m)`,
`entropic_partial_wasserstein(a, b, M, reg, m)` and `sinkhorn(a, b, M, reg)` on
2-D and 16-D batches, plus each call's own stopping error (`*_poterr`: its
distance to POT run to a much tighter tolerance).
"""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm
from fm.couplings import partial, unbalanced

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pot_couplings.npz")
REF = dict(np.load(FIXTURE))
CASES = sorted(k[:-len("_args")] for k in REF if k.endswith("_args") and "/sinkhorn/" not in k)
SOLVE = {"unbalanced": unbalanced.solve_cost, "partial": partial.solve_cost}


def _case(case):
  name, kind, _ = case.split("/")
  reg, second = (float(v) for v in REF[case + "_args"])
  return kind, REF[f"{name}/x0"], REF[f"{name}/x1"], REF[f"{name}/M"], reg, second, REF[case]


def _kw(kind, second):
  return {"reg_m": second} if kind == "unbalanced" else {"mass": second}


@pytest.mark.parametrize("case", CASES)
def test_float64_plan_equals_pot(case):
  """Solved to 1e-13 in float64, fm's plan is POT's up to POT's own stopping error (+1e-10 of the max entry)."""
  kind, _, _, cost, reg, second, pot = _case(case)
  with jax.enable_x64(True):
    log_plan, info = jax.jit(SOLVE[kind], static_argnums=(2, 3, 4))(jnp.asarray(cost), reg, second, 1e-13, 100000)
    got = np.exp(np.asarray(log_plan))
  assert bool(info["converged"]) and got.dtype == np.float64
  np.testing.assert_allclose(got, pot, rtol=0, atol=float(REF[case + "_poterr"]) + 1e-10 * pot.max())
  np.testing.assert_allclose(float(info["mass"]), pot.sum(), rtol=1e-6)
  if kind == "partial":  # the constraints: total mass, rows <= a, columns <= b
    n, m = cost.shape
    np.testing.assert_allclose(got.sum(), second, rtol=1e-12)
    assert (got.sum(1) <= (1 + 1e-9) / n).all() and (got.sum(0) <= (1 + 1e-9) / m).all()


@pytest.mark.parametrize("case", CASES)
def test_float32_coupling_from_points(case):
  """The coupling as configured (float32, points in, default threshold) is within 0.5% of POT's largest entry."""
  kind, x0, x1, _, reg, second, pot = _case(case)
  couple = fm.couplings.make(kind, epsilon=reg, **_kw(kind, second))
  got = np.asarray(jax.jit(couple.plan)(x0, x1), np.float64)
  np.testing.assert_allclose(got, pot, rtol=0, atol=5e-3 * pot.max())


def test_unbalanced_large_reg_m_is_balanced_sinkhorn():
  """reg_m -> inf recovers POT's balanced Sinkhorn plan (tau = reg_m / (reg_m + reg) -> 1)."""
  cost, reg = REF["d2/M"], float(REF["d2/sinkhorn/1_args"][0])
  pot = REF["d2/sinkhorn/1"]
  with jax.enable_x64(True):
    log_plan, _ = unbalanced.solve_cost(jnp.asarray(cost), reg, 1e7, 1e-12, 200000)
  np.testing.assert_allclose(np.exp(np.asarray(log_plan)), pot, rtol=0, atol=1e-5 * pot.max())
  # ... and so does full-mass partial OT.
  with jax.enable_x64(True):
    log_plan, _ = partial.solve_cost(jnp.asarray(cost), reg, 1.0, 1e-13, 200000)
  np.testing.assert_allclose(np.exp(np.asarray(log_plan)), pot, rtol=0, atol=1e-8 * pot.max())


@pytest.mark.parametrize("case", ["d2/sinkhorn/1", "d16/sinkhorn/0"])
def test_sinkhorn_coupling_equals_pot(case):
  """The existing (ott-jax) Sinkhorn coupling still gives POT's `ot.sinkhorn` plan (float32)."""
  name = case.split("/")[0]
  pot = REF[case]
  couple = fm.couplings.make("sinkhorn", epsilon=float(REF[case + "_args"][0]), threshold=1e-6, max_iterations=5000)
  got = np.asarray(jax.jit(couple.plan)(REF[f"{name}/x0"], REF[f"{name}/x1"]))
  np.testing.assert_allclose(got, pot, rtol=0, atol=2e-3 * pot.max())


@pytest.mark.parametrize("name,kw", [("unbalanced", {"reg_m": 0.5}), ("partial", {"mass": 0.6}),
                                     ("unbalanced", {"replace": True}), ("partial", {"replace": True, "mass": 0.5})])
def test_jit_once_indices_and_info(name, kw):
  couple = fm.couplings.make(name, **kw)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key, x0, x1):
    return couple(key, x0, x1)

  chex.clear_trace_counter()
  for seed in range(2):
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x0, x1 = jax.random.normal(k0, (16, 3, 4, 4)), jax.random.normal(k1, (16, 3, 4, 4)) + 0.5
    i0, i1, info = step(k2, x0, x1)
    assert i0.shape == i1.shape == (16,) and i0.dtype == i1.dtype == jnp.int32
    assert 0 <= int(i0.min()) and int(i0.max()) < 16 and 0 <= int(i1.min()) and int(i1.max()) < 16
    assert {"cost_before", "cost_after", "converged", "iterations", "epsilon", "mass"} <= set(info)
    assert bool(info["converged"]) and info["cost_after"] < info["cost_before"]
    if not kw.get("replace"):
      np.testing.assert_array_equal(i0, np.arange(16))
    if name == "partial":
      np.testing.assert_allclose(float(info["mass"]), kw.get("mass", 1.0), rtol=1e-5)


def test_joint_draw_follows_the_normalised_plan():
  """replace=True draws pairs (i, j) with probability plan[i, j] / mass (6000 draws of a 6 x 6 plan)."""
  x0, x1 = REF["d2/x0"][:6], REF["d2/x1"][:6]
  couple = fm.couplings.make("partial", epsilon=0.5, mass=0.5, replace=True)
  p = np.asarray(couple.plan(x0, x1), np.float64)
  i0, i1, _ = jax.vmap(couple, in_axes=(0, None, None))(jax.random.split(jax.random.PRNGKey(0), 1000), x0, x1)
  counts = np.zeros((6, 6))
  np.add.at(counts, (np.asarray(i0).ravel(), np.asarray(i1).ravel()), 1)
  expected = 6000 * p / p.sum()
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 70, chi2  # 35 degrees of freedom: P(chi2 > 70) < 1e-3


@pytest.mark.parametrize("name,kw,word", [
    ("unbalanced", {"reg_m": 0.0}, "reg_m"), ("unbalanced", {"reg_m": float("inf")}, "reg_m"),
    ("unbalanced", {"reg_m": -1.0}, "reg_m"), ("partial", {"mass": 0.0}, "mass"), ("partial", {"mass": 1.5}, "mass"),
    ("partial", {"mass": float("nan")}, "mass"), ("partial", {"mass": True}, "mass"),
    ("partial", {"epsilon": 0.0}, "epsilon"), ("unbalanced", {"max_iterations": 0}, "max_iterations"),
    ("partial", {"reg_m": 1.0}, "mass"), ("unbalanced", {"mass": 0.5}, "reg_m"),
])
def test_bad_options_one_sentence(name, kw, word):
  with pytest.raises(ValueError) as e:
    fm.couplings.make(name, **kw)
  msg = str(e.value)
  assert word in msg and "\n" not in msg and msg.count(". ") == 0, msg
