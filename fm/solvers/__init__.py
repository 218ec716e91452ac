"""ODE solvers with exact NFE accounting.

A solver is a Butcher tableau plus an order (`fm.solvers.tableau`); fixed-step
methods share one explicit RK driver under `lax.scan` (`fixed`), dopri5 runs
an embedded-pair driver under `lax.while_loop` with a separate step-size
controller (`adaptive`). `integrate` is the entry point:

    x1, info = fm.solvers.integrate(v, x0, solver="rk4", steps=20)
    x1, info = fm.solvers.integrate(v, x0, solver="dopri5", rtol=1e-5, atol=1e-5)
    info["nfe"], info["steps"], info["rejected"], info["success"]

SDEs with additive noise (`sde`: Euler-Maruyama, stochastic Heun) and the MeanFlow
average-velocity sampler (`meanflow`) count NFE the same way: one call of the network.
"""
from fm.solvers.adaptive import StepSizeController, initial_step, integrate_adaptive
from fm.solvers.api import ADAPTIVE, FIXED_STEP, SOLVERS, check_tolerances, integrate
from fm.solvers.fixed import integrate_fixed, rk_stages
from fm.solvers.meanflow import integrate_average
from fm.solvers.sde import SDE_SOLVERS, integrate_sde

MEANFLOW = ("meanflow",)
SAMPLERS = SOLVERS + SDE_SOLVERS + MEANFLOW   # every name `fm sample --solver` takes


def check_sampler(solver: str, steps: int | None) -> None:
  """ValueError (one sentence) unless `solver` is one of `SAMPLERS` with `steps` given exactly when it is fixed-step."""
  if solver not in SAMPLERS:
    raise ValueError(f"--solver: invalid choice {solver!r}; valid solvers: {', '.join(SAMPLERS)}")
  if solver not in ADAPTIVE and steps is None:
    raise ValueError(f"solver {solver!r} is fixed-step: pass --steps N")
  if solver in ADAPTIVE and steps is not None:
    raise ValueError(f"solver {solver!r} is adaptive: use --rtol/--atol, not --steps")


from fm.solvers.tableau import DOPRI5, EULER, HEUN, MIDPOINT, RK4, TABLEAUX, ButcherTableau

__all__ = [
    "integrate",
    "integrate_sde",
    "integrate_average",
    "SDE_SOLVERS",
    "MEANFLOW",
    "SAMPLERS",
    "check_sampler",
    "check_tolerances",
    "SOLVERS",
    "FIXED_STEP",
    "ADAPTIVE",
    "ButcherTableau",
    "TABLEAUX",
    "EULER",
    "MIDPOINT",
    "HEUN",
    "RK4",
    "DOPRI5",
    "StepSizeController",
    "initial_step",
    "integrate_adaptive",
    "integrate_fixed",
    "rk_stages",
]
