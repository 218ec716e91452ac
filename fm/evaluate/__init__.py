"""Evaluation of trained runs: toy metrics (`toy`) and figures (`plots`)."""
from fm.evaluate import plots, toy
from fm.evaluate.toy import evaluate, evaluate_workdir, generate, sample_workdir, trajectories

__all__ = ["plots", "toy", "evaluate", "evaluate_workdir", "generate", "sample_workdir", "trajectories"]
