"""`nll`: negative log-likelihood (nats) of held-out toy target samples (`fm.evaluate.toy.nll`)."""
from __future__ import annotations

from typing import Any

from fm.evaluate import toy
from fm.evaluate.metric import Context, Metric

__all__ = ["NLL"]


class NLL(Metric):
  """-mean log p1(y) by the CNF change of variables, where the source density is known in closed form."""
  name = "nll"
  kinds = ("points",)
  needs = "held-out target samples and a source with a closed-form density (fm.data.toys.DENSITIES)"

  def prepare(self, ctx: Context) -> str | None:
    return toy.nll_unavailable(ctx.run.config.data.task)

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    task = ctx.run.config.data.task
    out = toy.nll(ctx.run.model, ctx.params, task, ctx.num(self), ctx.seed, solver, rtol=rtol, atol=atol,
                  steps=steps, divergence=ctx.divergence, num_probes=ctx.opts.num_probes)
    return {**out, "task": task}
