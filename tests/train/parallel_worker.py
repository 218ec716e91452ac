"""Run by tests/train/test_parallel.py in a subprocess (its own device count): train, evaluate, sample.

    python parallel_worker.py OUTDIR NAME=OVERRIDE,OVERRIDE ...   (overrides as KEY:VALUE)

Each NAME is trained into OUTDIR/NAME with the tiny test config plus its
overrides, evaluated (eval.json) and sampled (dopri5 and Euler .npz files).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.helpers import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  from fm import evaluate, train  # pylint: disable=g-import-not-at-top
  outdir = argv[0]
  for spec in argv[1:]:
    name, _, items = spec.partition("=")
    kw = dict(item.split(":", 1) for item in items.split(",") if item)
    workdir = os.path.join(outdir, name)
    train.train_and_evaluate(tiny_config(**kw), workdir)
    evaluate.sample_workdir(workdir, os.path.join(workdir, "dopri5.npz"), solver="dopri5", num=64)
    evaluate.sample_workdir(workdir, os.path.join(workdir, "euler.npz"), solver="euler", steps=8, num=64)
  print(f"devices={jax.device_count()} processes={jax.process_count()}")


if __name__ == "__main__":
  main(sys.argv[1:])
