"""Run by tests/train/test_parallel.py in a subprocess with its own device count.

    python parallel_worker.py TASK ...   with TASK one of
      train=WORKDIR=KEY:VALUE,KEY:VALUE,...
      sample=WORKDIR=OUTDIR

`train`: trains WORKDIR with the tiny toy test config and the overrides (`KEY`
dotted with `__`; `config:PATH` starts from another config file instead, with
only the listed overrides), evaluates it if `eval.at_end` (eval.json) and
samples it (euler.npz, 8 Euler steps; dopri5.npz for toy runs). `sample`:
samples an existing run into OUTDIR the same way. Tasks run in order, in one
process (one JAX start-up).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.helpers import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_SAMPLES = 64


def _config(kw):
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  path = kw.pop("config", None)
  if path is None:
    return tiny_config(**kw)
  return config_lib.apply_overrides(config_lib.load(path),
                                    [(k.replace("__", "."), v) for k, v in kw.items()])


def _sample(workdir, outdir, num=NUM_SAMPLES):
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  os.makedirs(outdir, exist_ok=True)
  images = evaluate.kind(workdir) == "images"
  extra = {"batch_size": 8} if images else {}
  evaluate.sample_workdir(workdir, os.path.join(outdir, "euler.npz"), solver="euler", steps=8,
                          num=8 if images else num, **extra)
  if not images:
    evaluate.sample_workdir(workdir, os.path.join(outdir, "dopri5.npz"), solver="dopri5", num=num)


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  from fm import experiment  # pylint: disable=g-import-not-at-top
  for task in argv:
    command, workdir, rest = task.split("=", 2)
    if command == "train":
      kw = dict(item.split(":", 1) for item in rest.split(",") if item)
      experiment.train_and_evaluate(_config(kw), workdir)
      _sample(workdir, workdir)
    elif command == "sample":
      _sample(workdir, rest)
    else:
      raise SystemExit(f"unknown task {task!r}")
  print(f"devices={jax.device_count()} processes={jax.process_count()}")


if __name__ == "__main__":
  main(sys.argv[1:])
