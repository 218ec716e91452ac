"""Tableaux: consistency, order conditions, and agreement with scipy's RK45."""
import numpy as np
import pytest
from scipy.integrate._ivp.rk import RK45

from fm.solvers import DOPRI5, TABLEAUX


def _dense(tab):
  s = tab.stages
  a = np.zeros((s, s))
  for i, row in enumerate(tab.a):
    a[i, : len(row)] = row
  return a, np.array(tab.b), np.array(tab.c)


def _order_conditions(a, c):
  """(weight vector phi, 1/gamma) for the 17 rooted trees up to order 5."""
  ac = a @ c
  return [
    (np.ones_like(c), 1.0),
    (c, 1 / 2),
    (c**2, 1 / 3), (ac, 1 / 6),
    (c**3, 1 / 4), (c * ac, 1 / 8), (a @ c**2, 1 / 12), (a @ ac, 1 / 24),
    (c**4, 1 / 5), (c**2 * ac, 1 / 10), (c * (a @ c**2), 1 / 15),
    (c * (a @ ac), 1 / 30), (ac**2, 1 / 20), (a @ c**3, 1 / 20),
    (a @ (c * ac), 1 / 40), (a @ a @ c**2, 1 / 60), (a @ a @ ac, 1 / 120),
  ]


_N_TREES = {1: 1, 2: 2, 3: 4, 4: 8, 5: 17}


@pytest.mark.parametrize("name", sorted(TABLEAUX))
def test_consistency_and_order(name):
  tab = TABLEAUX[name]
  a, b, c = _dense(tab)
  assert all(len(r) == i for i, r in enumerate(tab.a))
  np.testing.assert_allclose(a.sum(1), c, atol=1e-15)
  conds = _order_conditions(a, c)
  for phi, target in conds[: _N_TREES[tab.order]]:
    np.testing.assert_allclose(b @ phi, target, atol=1e-14)
  if tab.order < 5:  # the order is not higher than claimed
    assert any(abs(b @ phi - t) > 1e-6 for phi, t in conds[_N_TREES[tab.order] :])


def test_dopri5_embedded_is_order_4_and_fsal():
  a, b, c = _dense(DOPRI5)
  b_err = np.array(DOPRI5.b_err)
  for phi, target in _order_conditions(a, c)[: _N_TREES[4]]:
    np.testing.assert_allclose(b_err @ phi, target, atol=1e-14)
  np.testing.assert_array_equal(a[-1, :-1], b[:-1])
  assert b[-1] == 0.0 and DOPRI5.fsal


def test_dopri5_matches_scipy_rk45():
  a, b, c = _dense(DOPRI5)
  np.testing.assert_allclose(a[:6, :5], RK45.A, rtol=0, atol=1e-16)
  np.testing.assert_allclose(b[:6], RK45.B, rtol=0, atol=1e-16)
  np.testing.assert_allclose(c[:6], RK45.C, rtol=0, atol=1e-16)
  # scipy's E is (b_err - b) over all 7 stages.
  np.testing.assert_allclose(-np.array(DOPRI5.error_weights), RK45.E, rtol=0, atol=1e-16)
