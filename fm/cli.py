"""Command line: `fm train | sample | eval | sweep` (also `python -m fm`).

Config overrides are dotted flags, `--config.train.steps=20000`. Any bad input
(unknown key, method, task, bad value, missing workdir) prints one sentence to
stderr and exits with status 2 before anything in the workdir is touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

__all__ = ["main"]


class UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line on stderr and exit status 2."""

  def error(self, message):
    raise UsageError(f"{self.prog}: {message}")


def _split_overrides(extra: list[str]) -> list[tuple[str, str]]:
  """["--config.a.b=1", "--config.c", "2"] -> [("a.b", "1"), ("c", "2")]."""
  out, i = [], 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      raise UsageError(f"unrecognized argument {arg!r}; config overrides look like --config.train.steps=100")
    key, sep, value = arg[len("--config."):].partition("=")
    if not sep:
      if i + 1 >= len(extra):
        raise UsageError(f"config override {arg!r} has no value")
      value, i = extra[i + 1], i + 1
    out.append((key, value))
    i += 1
  return out


def _load_config(args, overrides, workdir_fallback: bool):
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  if args.config:
    config = config_lib.load(args.config)
  elif workdir_fallback and os.path.isfile(os.path.join(args.workdir, "config.json")):
    with open(os.path.join(args.workdir, "config.json")) as f:
      config = config_lib.from_dict(json.load(f))
  else:
    raise UsageError("--config is required (e.g. --config configs/toy2d.py)")
  return config_lib.apply_overrides(config, overrides)


def _train(args, overrides):
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides, workdir_fallback=True)
  config_lib.validate(config)   # before importing the trainer: bad values are answered at once
  from fm import train  # pylint: disable=g-import-not-at-top
  train.prepare(config, args.workdir)
  result = train.train_and_evaluate(config, args.workdir)
  if isinstance(result, dict):
    print(json.dumps(result, indent=2))


def _check_num(workdir: str, num: int, kind: str) -> None:
  """UsageError if `--num` samples cannot fit in this machine's memory (or in int32 indices)."""
  from fm.train import run  # pylint: disable=g-import-not-at-top
  size = 1
  for d in run.read_source_info(workdir)["shape"]:
    size *= int(d)
  # Points: one dopri5 solve holds ~10 float32 copies of all samples; images: uint8 on the host.
  needed = num * size * (40 if kind == "points" else 1)
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):
    total = None
  if num > 2 ** 31 - 1 or (total and needed > total):
    have = f"this machine's {total / 1e9:.0f} GB" if total else "the 2^31 samples one call can index"
    raise UsageError(f"--num {num} needs about {needed / 1e9:.0f} GB of memory for the samples, more than "
                     f"{have}; draw fewer samples per call (--num) and vary --seed")


def _check_out(out: str) -> None:
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if not out.endswith(".npz"):
    raise UsageError(f"--out must end in .npz, got {out!r}")
  if os.path.isdir(out):
    raise UsageError(f"--out {out!r} is a directory")
  directory = os.path.dirname(out) or "."
  if not os.path.isdir(directory):
    raise UsageError(f"directory of --out {out!r} does not exist")
  workdir_lib.check_writable_dir(directory, "directory of --out")


def _sample(args, overrides):
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  del overrides
  workdir_lib.check_run(args.workdir)   # path problems first: they need no JAX
  out = args.out or os.path.join(args.workdir, "samples.npz")
  _check_out(out)
  from fm import evaluate, solvers  # pylint: disable=g-import-not-at-top
  if args.solver not in solvers.SOLVERS:
    raise UsageError(f"--solver: invalid choice {args.solver!r}; valid solvers: {', '.join(solvers.SOLVERS)}")
  if args.solver in solvers.FIXED_STEP and args.steps is None:
    raise UsageError(f"solver {args.solver!r} is fixed-step: pass --steps N")
  if args.solver in solvers.ADAPTIVE and args.steps is not None:
    raise UsageError(f"solver {args.solver!r} is adaptive: use --rtol/--atol, not --steps")
  for name in ("num", "steps", "max_steps", "batch_size"):
    value = getattr(args, name)
    if value is not None and value <= 0:
      raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
  try:
    solvers.check_tolerances(args.rtol, args.atol)
  except ValueError as e:
    raise UsageError(f"--{e}") from None
  kind = evaluate.kind(args.workdir)
  _check_num(args.workdir, args.num, kind)
  if args.png_dir:
    if kind != "images":
      raise UsageError("--png-dir is for image runs; this run's data are points")
    if os.path.exists(args.png_dir) and not os.path.isdir(args.png_dir):
      raise UsageError(f"--png-dir {args.png_dir!r} exists and is not a directory")
    workdir_lib.check_path(args.png_dir, what="--png-dir")
  kwargs = dict(solver=args.solver, num=args.num, seed=args.seed, rtol=args.rtol, atol=args.atol,
                steps=args.steps, step=args.step, max_steps=args.max_steps)
  if kind == "images":
    kwargs.update(batch_size=args.batch_size or 256, png_dir=args.png_dir)
  info = evaluate.sample_workdir(args.workdir, out, **kwargs)
  print(f"NFE {info['nfe']} ({args.solver}); wrote {info['out']} and {info['png']}")
  if not info.get("success", True):
    print(f"fm: warning: {args.solver} stopped at --max-steps {args.max_steps} before reaching t = 1, so the "
          f"samples in {out} are not the flow's output (recorded as success=False); loosen --rtol/--atol "
          f"or raise --max-steps", file=sys.stderr)


def _eval(args, overrides):
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  del overrides
  workdir_lib.check_run(args.workdir)
  workdir_lib.check_writable_dir(args.workdir, "workdir")
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  result = evaluate.evaluate_workdir(args.workdir)
  print(json.dumps(result, indent=2))
  for warning in result.get("warnings", []):
    print(f"fm: warning: {warning}", file=sys.stderr)


def _sweep(args, overrides):
  from fm import sweep  # pylint: disable=g-import-not-at-top
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_path(args.workdir)
  config = _load_config(args, overrides, workdir_fallback=False)
  grid = sweep.parse_grid(args.grid or [])
  _, failures = sweep.run_sweep(config, args.workdir, grid)
  with open(os.path.join(args.workdir, "table.md")) as f:
    print(f.read(), end="")
  if failures:
    print(f"fm: error: {len(failures)} sweep point(s) failed ({'; '.join(l for l, _ in failures)}), see "
          f"{os.path.join(args.workdir, 'table.md')}", file=sys.stderr)
    return 1
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="fm", description="Flow matching in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  p = sub.add_parser("train", help="train (or resume) a run in --workdir",
                     description="Train a flow; re-running with the same --workdir resumes it. "
                                 "Override config keys with --config.KEY=VALUE.")
  p.add_argument("--config", help="config file, optionally :variant (configs/toy2d.py:smoke); "
                                   "defaults to WORKDIR/config.json when resuming")
  p.add_argument("--workdir", required=True)
  p.set_defaults(fn=_train)

  p = sub.add_parser("sample", help="sample a trained run with an ODE solver",
                     description="Sample the EMA model of a run's checkpoint; writes OUT (.npz: samples, "
                                 "nfe, solver settings, seed, success) and beside it the same name with .png "
                                 "in place of .npz (WORKDIR/samples.png by default): a scatter plot (toy runs) "
                                 "or an 8x8 grid of the first 64 images (image runs).")
  p.add_argument("--workdir", required=True)
  p.add_argument("--solver", default="dopri5", help="one of fm.solvers.SOLVERS (default dopri5)")
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--steps", type=int, default=None, help="steps for fixed-step solvers")
  p.add_argument("--max-steps", type=int, default=4096,
                 help="dopri5: most attempted steps; a solve that hits it is reported (default 4096)")
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="output .npz (default WORKDIR/samples.npz)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--batch-size", type=int, default=None, help="images per solver call (image runs; default 256)")
  p.add_argument("--png-dir", default=None, help="also write every image as a PNG here (image runs; for external FID tools)")
  p.set_defaults(fn=_sample)

  p = sub.add_parser("eval", help="evaluate a trained run (writes WORKDIR/eval.json)",
                     description="W2 to held-out target samples (dopri5 and Euler), dopri5 NFE and "
                                 "normalised path energy of the run's latest EMA checkpoint.")
  p.add_argument("--workdir", required=True)
  p.set_defaults(fn=_eval)

  p = sub.add_parser("sweep", help="grid of runs with a mean ± std table and a figure",
                     description="Train and evaluate every grid point in WORKDIR/<point>/, then write "
                                 "table.md, table.csv and figure.png. Extra --config.KEY=VALUE apply to all.")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                 help="repeatable, e.g. --grid method=icfm,otcfm --grid seed=0,1,2")
  p.set_defaults(fn=_sweep)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("fm").setLevel(logging.INFO)
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    args, extra = _parser().parse_known_args(argv)
    if not args.workdir:
      raise UsageError("--workdir must not be empty")
    if extra and args.command in ("sample", "eval"):
      raise UsageError(f"fm {args.command}: unrecognized arguments: {' '.join(extra)}")
    overrides = _split_overrides(extra)
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
      import jax  # pylint: disable=g-import-not-at-top
      jax.distributed.initialize()
    code = args.fn(args, overrides)
    if code:
      return code
  except (UsageError, config_lib.ConfigError) as e:
    print(f"fm: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("fm: interrupted by Ctrl-C (re-running the same command resumes or redoes the work)", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    from fm import train  # pylint: disable=g-import-not-at-top
    if isinstance(e, train.Preempted):
      print(f"fm: {e}", file=sys.stderr)
      return 128 + e.signum
    if isinstance(e, train.TrainingError):
      print(f"fm: error: {e}", file=sys.stderr)
      return 1
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main())
