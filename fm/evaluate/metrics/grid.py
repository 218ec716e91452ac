"""`grid`: an image run's samples as an `.npz` and an 8x8 PNG grid, with the solver's NFE (no score)."""
from __future__ import annotations

import os
from typing import Any

from fm.evaluate import images
from fm.evaluate.metric import Context, Metric

__all__ = ["Grid"]


class Grid(Metric):
  """`num` samples (default `eval.num_samples`) to `samples/eval_<step>[_<setting>].npz` and a PNG grid beside it.

  Its record's `value` is null: what it measures is the NFE (mean per batch) and
  whether the solve reached t = 1; the images are for looking at.
  """
  name = "grid"
  kinds = ("images",)
  needs = "generated images (written to WORKDIR/samples/)"
  sweepable = False
  default = False

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    ec, num = ctx.eval_config, ctx.num(self)
    setting = (solver, steps if steps is not None else (rtol, atol), num, ctx.seed)
    tag = "" if setting == ("dopri5", (ec.rtol, ec.atol), ec.num_samples, ec.seed) else (
        f"_{solver}-{steps if steps is not None else rtol}_n{num}_seed{ctx.seed}")
    directory = os.path.join(ctx.workdir, "samples")
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, f"eval_{ctx.step:08d}{tag}.npz")
    info = images.sample_run(ctx.run, ctx.params, ctx.step, out, solver, num=num, seed=ctx.seed, rtol=rtol,
                             atol=atol, steps=steps, batch_size=ctx.batch_size, progress=ctx.opts.progress,
                             guidance=ctx.guidance, source_info=ctx.source_info)
    nfe = info["nfe_per_batch"]
    extra = {"network_passes": info["network_passes"] / len(nfe)} if "network_passes" in info else {}
    return {"value": None, "nfe": sum(nfe) / len(nfe), "nfe_total": info["nfe"], "num_samples": num,
            "batch_size": ctx.batch_size, "success": info["success"], **extra,
            "samples": os.path.relpath(out, ctx.workdir), "png": os.path.relpath(info["png"], ctx.workdir)}

  def summary(self, record: dict[str, Any]) -> dict[str, Any]:
    out = {"nfe": record["nfe"], "nfe_total": record["nfe_total"], "samples": record["samples"],
           "num_samples": record["num_samples"]}
    for key in ("guidance", "network_passes"):   # conditional runs
      if key in record:
        out[key] = record[key]
    if record["solver"] == "dopri5":
      out["dopri5_success"] = record["success"]
    return out
