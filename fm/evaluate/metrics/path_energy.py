"""`path_energy`: kinetic energy of a toy run's Euler trajectories (`fm.evaluate.toy.path_energy_at`)."""
from __future__ import annotations

from typing import Any

from fm.evaluate import toy
from fm.evaluate.metric import Context, Metric

__all__ = ["PathEnergy"]


class PathEnergy(Metric):
  """E int |v|^2 dt along `eval.euler_steps` Euler steps, its normalised form |PE - W2^2| / W2^2, and that W2."""
  name = "path_energy"
  kinds = ("points",)
  needs = "generated Euler trajectories (always `eval.euler_steps` Euler steps) and held-out target samples"
  sweepable = False

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    del solver, rtol, atol, steps   # the energy of a trajectory is measured on the Euler grid of the run
    task, euler_steps = ctx.run.config.data.task, ctx.eval_config.euler_steps
    out = toy.path_energy_at(ctx.run.model, ctx.params, task, ctx.num(self), ctx.seed, euler_steps=euler_steps,
                             guidance=ctx.guidance)
    return {**out, "task": task, "solver": "euler", "steps": euler_steps}

  def summary(self, record: dict[str, Any]) -> dict[str, Any]:
    return {"path_energy": record["value"], "normalized_path_energy": record["normalized_path_energy"],
            "w2_euler": record["w2_euler"], "w2_source_target": record["w2_source_target"]}
