"""Training: state, jitted multi-step, orbax checkpoints, the loop, reflow pairs."""
from fm.train import checkpoint, loop, reflow, run, state, step
from fm.train.loop import Preempted, TrainingError, prepare, train, train_and_evaluate
from fm.train.state import TrainState

__all__ = ["checkpoint", "loop", "reflow", "run", "state", "step", "Preempted", "TrainingError",
           "TrainState", "prepare", "train", "train_and_evaluate"]
