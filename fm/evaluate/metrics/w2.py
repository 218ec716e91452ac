"""`w2`: W2 between generated samples and held-out target samples of a toy run (`fm.evaluate.toy.w2_at`)."""
from __future__ import annotations

from typing import Any

from fm.evaluate import toy
from fm.data import toys
from fm.evaluate.metric import Context, Metric, sde_kwargs

__all__ = ["W2"]


class W2(Metric):
  """Exact W2 (`fm.metrics.w2`) of `num` samples pushed from the source to held-out target samples."""
  name = "w2"
  kinds = ("points",)
  needs = "generated samples and as many held-out target samples (drawn from the toy task)"

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    task = ctx.run.config.data.task
    sde = sde_kwargs(ctx, solver, toys.parse_task(task)[0])
    out = toy.w2_at(ctx.run.model, ctx.params, task, ctx.num(self), ctx.seed, solver, rtol=rtol, atol=atol,
                    steps=steps, guidance=ctx.guidance, **sde)   # a conditional run adds per-class W2, mode accuracy
    return {**out, "task": task, **({"sde_noise": sde["noise"]} if sde else {})}

  def summary(self, record: dict[str, Any]) -> dict[str, Any]:
    out = {"w2": record["value"], "nfe": record["nfe"]}
    for key in ("guidance", "network_passes", "w2_class_mean", "w2_per_class", "mode_accuracy"):
      if key in record:
        out[key] = record[key]
    if record["solver"] == "dopri5":
      out["dopri5_success"] = record["success"]
    return out
