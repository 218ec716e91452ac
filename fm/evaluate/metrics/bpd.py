"""`bpd`: bits per dimension of held-out images (`fm.evaluate.image_metrics.bpd_of_run`)."""
from __future__ import annotations

from typing import Any

from fm.evaluate import image_metrics, reference
from fm.evaluate.metric import Context, Metric

__all__ = ["BPD"]


class BPD(Metric):
  """Mean bits/dim (uniform dequantisation, exact or Hutchinson divergence) of `--bpd-num` held-out images."""
  name = "bpd"
  kinds = ("images",)
  needs = ("held-out images: the source's test split, or the images after data.limit of the training split "
           "(--bpd-num of them, 10 000 by default)")

  def prepare(self, ctx: Context) -> str | None:
    kwargs = reference.load_kwargs(ctx.run.config.data.to_dict())
    images, labels, where = ctx.shared("held_out", lambda: image_metrics.held_out(
        kwargs, ctx.opts.bpd_num, ctx.seed, with_labels=True))
    if images is None:
      return where
    if ctx.num_classes and labels is None:
      return f"bits/dim skipped: the held-out images ({where}) have no labels to condition on."
    # A conditional run: bits/dim conditional on each image's true label (the conditional field).
    self.images, self.labels, self.where = images, labels if ctx.num_classes else None, where
    return None

  def compute(self, ctx: Context, solver: str, rtol: float, atol: float, steps: int | None) -> dict[str, Any]:
    out = image_metrics.bpd_of_run(ctx.run, ctx.params, self.images, seed=ctx.seed, divergence=ctx.divergence,
                                   num_probes=ctx.opts.num_probes, batch_size=ctx.opts.bpd_batch_size,
                                   solver=solver, rtol=rtol, atol=atol, steps=steps, labels=self.labels,
                                   progress=ctx.opts.progress)
    return {**out, "held_out": self.where}
