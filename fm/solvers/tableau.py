"""Butcher tableaux of the explicit Runge-Kutta methods used by `fm.solvers`.

A solver is data: a lower-triangular stage matrix `a`, weights `b`, nodes `c`,
an order, and for embedded pairs a second weight vector `b_err` (the weights of
the lower-order solution) plus the FSAL flag. All coefficients are exact
rationals, written as fractions and converted to Python floats once, so they
are correct to the last digit of a float64 and are weakly typed in JAX (the
integration runs in the dtype of the state).
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction as F

__all__ = ["ButcherTableau", "EULER", "MIDPOINT", "HEUN", "RK4", "DOPRI5", "TABLEAUX"]


def _f(xs):
  return tuple(float(x) for x in xs)


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
  """Explicit Runge-Kutta tableau.

  Attributes:
    name: solver name.
    a: stage matrix as a tuple of rows; row `i` has `i` entries (strictly
    lower triangular, explicit method). Row 0 is empty.
    b: solution weights, length `stages`.
    c: nodes, length `stages` (c[i] == sum(a[i]) for consistency).
    order: order of the solution given by `b`.
    b_err: weights of the embedded lower-order solution (adaptive pairs only),
    `None` for fixed-step methods.
    fsal: first-same-as-last: the last stage is evaluated at the new
    solution, so it is the first stage of the next step.
  """

  name: str
  a: tuple[tuple[float, ...], ...]
  b: tuple[float, ...]
  c: tuple[float, ...]
  order: int
  b_err: tuple[float, ...] | None = None
  fsal: bool = False

  @property
  def stages(self) -> int:
    """Number of stages (calls of the vector field per step, without FSAL)."""
    return len(self.b)

  @property
  def error_weights(self) -> tuple[float, ...]:
    """b - b_err: the weights that give the local error estimate."""
    if self.b_err is None:
      raise ValueError(f"tableau {self.name!r} has no embedded error estimate")
    return tuple(x - y for x, y in zip(self.b, self.b_err))


EULER = ButcherTableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1)

# Explicit midpoint rule.
MIDPOINT = ButcherTableau(
  "midpoint", a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2
)

# Heun's method (explicit trapezoid rule); two evaluations per step, no FSAL.
HEUN = ButcherTableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)

# The classical fourth-order Runge-Kutta method.
RK4 = ButcherTableau(
  "rk4",
  a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
  b=_f([F(1, 6), F(1, 3), F(1, 3), F(1, 6)]),
  c=(0.0, 0.5, 0.5, 1.0),
  order=4,
)

# Dormand & Prince (1980) RK5(4)7M, as in Hairer, Norsett & Wanner,
# "Solving ODEs I", Table II.5.2. The last row of `a` equals `b` (FSAL).
_DOPRI5_B = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
DOPRI5 = ButcherTableau(
  "dopri5",
  a=(
    (),
    _f([F(1, 5)]),
    _f([F(3, 40), F(9, 40)]),
    _f([F(44, 45), F(-56, 15), F(32, 9)]),
    _f([F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)]),
    _f([F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)]),
    _f(_DOPRI5_B[:6]),
  ),
  b=_f(_DOPRI5_B),
  c=_f([0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1]),
  order=5,
  b_err=_f(
    [
      F(5179, 57600),
      0,
      F(7571, 16695),
      F(393, 640),
      F(-92097, 339200),
      F(187, 2100),
      F(1, 40),
    ]
  ),
  fsal=True,
)

TABLEAUX: dict[str, ButcherTableau] = {
  t.name: t for t in (EULER, MIDPOINT, HEUN, RK4, DOPRI5)
}
