"""What a run's network outputs, and the fields the samplers build from it.

=================  ======================  =====================================================
head               model options           fields
=================  ======================  =====================================================
velocity           (none)                  v(t, x); SDE: `fm.stochastic.flow_sde` (Gaussian path,
                                           x0 ~ N(0, I) independent of x1)
flow_score         outputs=2               v = first half; SDE: SF2M's v + noise^2 s_theta, g = noise sigma
average_velocity   second_time=True        u(t, x, h) over [t, t + h]; v(t, x) = u(t, x, 0)
=================  ======================  =====================================================

The model's own options say which head it has (`for_model`), so `velocity(model, params)`
reads any run correctly. A head is static and hashable. Every field costs one network
forward per call, so NFE = calls, whatever the solver.

Every field is read from `network(model, params, guidance, **model_extras)`, the raw
output; for a conditional run (labels `y=`) that output is guided as a whole
(classifier-free guidance is linear in it: `fm.guidance.guided`), so the flow and
score of sf2m, MeanFlow's average velocity and the SDE drift of a flow all follow
the guided output, at one batched call (two network passes) per field evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from fm import guidance as guidance_lib
from fm import paths as paths_lib
from fm import stochastic

__all__ = ["Head", "make", "for_model", "network", "check_sampler", "NAMES", "MODEL_OPTIONS"]

MODEL_OPTIONS = {"velocity": {}, "flow_score": {"outputs": 2}, "average_velocity": {"second_time": True}}
NAMES = tuple(MODEL_OPTIONS)


def _times(t, x):
  return jnp.full((x.shape[0],), t, x.dtype)


def network(model, params, guidance: float = 1.0, **model_extras) -> Callable:
  """`net(t, x, t2=None) -> [B, ..., outputs * C]`: the raw network output at scalar t (and scalar t2).

  With labels `y` `[B]` in `model_extras` the output is guided at scale `guidance`
  (`fm.guidance.guided`: out(null) + s (out(y) - out(null)), one batched call on 2B
  inputs for s not in {0, 1}); guidance is linear in the output, so every field below
  (flow and score, average velocity, the SDE drift) is guided as a whole.
  """
  y = model_extras.pop("y", None)

  def apply(t, x, labels=None, t2=None):
    extras = dict(model_extras)
    if labels is not None:
      extras["y"] = labels
    if t2 is not None:
      extras["t2"] = jnp.full((x.shape[0],), t2, x.dtype)
    return model.apply(params, _times(t, x), x, **extras)
  if y is None:
    if guidance != 1:
      raise ValueError(f"guidance {guidance!r} needs class labels y (a conditional run)")
    return apply
  return guidance_lib.guided(apply, y, guidance, model.num_classes)


@dataclasses.dataclass(frozen=True)
class Head:
  """How to read a network: `kind` is one of `NAMES`.

  Every field takes the model's extras (labels `y=` of a conditional run) and a
  `guidance` scale (`network`): the guided field costs one call, two network passes
  for a scale other than 0 and 1 (`fm.guidance.network_passes`).
  """
  kind: str

  @property
  def model_options(self) -> dict[str, Any]:
    """Options the model must be built with (`fm.models.make(name, **options, **head.model_options)`)."""
    return dict(MODEL_OPTIONS[self.kind])

  def velocity(self, model, params, guidance: float = 1.0, **model_extras) -> Callable:
    """`v(t, x) -> [B, *shape]` with scalar t (the probability-flow ODE's field)."""
    net = network(model, params, guidance, **model_extras)
    if self.kind == "velocity":
      return net
    if self.kind == "flow_score":
      from fm import sf2m  # pylint: disable=g-import-not-at-top
      return lambda t, x: sf2m.split_flow_score(net(t, x))[0]
    return lambda t, x: net(t, x, t2=0.0)

  def flow_and_score(self, model, params, guidance: float = 1.0, **model_extras) -> Callable:
    """`(t, x) -> (v, s_theta)` from one forward (flow_score heads only)."""
    from fm import sf2m  # pylint: disable=g-import-not-at-top  (sf2m imports paths only; kept local for clarity)
    self._need("flow_score", "a flow and a score")
    net = network(model, params, guidance, **model_extras)
    return lambda t, x: sf2m.split_flow_score(net(t, x))

  def average_velocity(self, model, params, guidance: float = 1.0, **model_extras) -> Callable:
    """`u(t, x, h) -> [B, *shape]`, the average velocity over [t, t + h] (average_velocity heads only)."""
    self._need("average_velocity", "an average velocity (MeanFlow)")
    net = network(model, params, guidance, **model_extras)
    return lambda t, x, h: net(t, x, t2=h)

  def sde(self, model, params, noise: float, path: paths_lib.Path, guidance: float = 1.0,
          **model_extras) -> stochastic.SDE:
    """The marginal-preserving SDE at diffusion scale `noise` (0: the probability-flow ODE).

    `path` is the run's probability path (its sigma for SF2M; its coefficients for a flow).
    With labels, the drift is that of the guided output (for a flow: of the guided
    velocity; the drift is affine in v, so this is also the guided drift).
    """
    if self.kind == "flow_score":
      if not isinstance(path, paths_lib.BrownianBridge):
        raise ValueError(f"an SF2M network needs the Brownian-bridge path 'sb', got {path!r}")
      return stochastic.sf2m_sde(self.flow_and_score(model, params, guidance, **model_extras), path.sigma, noise)
    if self.kind == "average_velocity":
      raise ValueError("a MeanFlow run has no score: sample it with --solver meanflow or an ODE solver")
    return stochastic.flow_sde(self.velocity(model, params, guidance, **model_extras), path, noise)

  def _need(self, kind, what):
    if self.kind != kind:
      raise ValueError(f"this run's network does not output {what} (its head is {self.kind!r})")


def make(kind: str = "velocity") -> Head:
  if kind not in MODEL_OPTIONS:
    raise ValueError(f"unknown head {kind!r}; valid heads: {', '.join(NAMES)}")
  return Head(kind)


def for_model(model) -> Head:
  """The head a model was built with, from its `outputs` / `second_time` options."""
  outputs, second = getattr(model, "outputs", 1), getattr(model, "second_time", False)
  if second and outputs != 1:
    raise ValueError("a network with a second time (MeanFlow) and several outputs has no defined head")
  if second:
    return Head("average_velocity")
  if outputs == 2:
    return Head("flow_score")
  if outputs != 1:
    raise ValueError(f"a network with outputs={outputs} has no defined head; valid: 1 or 2 (SF2M)")
  return Head("velocity")


def check_sampler(head: Head, solver: str, coupling: str, path: paths_lib.Path, source: str) -> None:
  """ValueError (one sentence) unless `solver` can sample a run with this head, coupling, path and source.

  `solver` is a name of `fm.solvers.SAMPLERS`; `source` names the run's x0 distribution
  ("gaussian" for N(0, I)). An SDE from a plain flow needs x0 ~ N(0, I) drawn independently
  of x1 on a path whose noise schedule is differentiable at t = 0 (not "sb").
  """
  from fm import solvers  # pylint: disable=g-import-not-at-top
  if solver in solvers.MEANFLOW and head.kind != "average_velocity":
    what = {"velocity": "a velocity", "flow_score": "a flow and a score"}[head.kind]
    raise ValueError(f"solver 'meanflow' needs a MeanFlow run (method meanflow); this run's network outputs "
                     f"{what}: use an ODE solver ({', '.join(solvers.SOLVERS)})")
  if solver not in solvers.SDE_SOLVERS or head.kind == "flow_score":
    return
  if head.kind == "average_velocity":
    raise ValueError(f"solver {solver!r} needs a score, which a MeanFlow run has not: use --solver meanflow "
                     f"or an ODE solver")
  if coupling != "independent" or source != "gaussian" or isinstance(path, paths_lib.BrownianBridge):
    raise ValueError(f"solver {solver!r} derives the score from the velocity, which needs x0 ~ N(0, I) drawn "
                     f"independently of x1 on a Gaussian path other than 'sb'; this run has coupling "
                     f"{coupling!r}, source {source!r} and path {type(path).__name__}: train method sf2m for SDE "
                     f"sampling, or use an ODE solver")
