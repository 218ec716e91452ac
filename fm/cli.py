"""Command line: `fm train | sample | eval | sweep` (also `python -m fm`).

Config overrides are dotted flags, `--config.train.steps=20000`. Any bad input
(unknown key, method, task, bad value, missing workdir) prints one sentence to
stderr and exits with status 2 before anything in the workdir is touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from fm.errors import UserError

__all__ = ["main"]


class UsageError(UserError):
  """A bad command-line flag (a `fm.errors.UserError`)."""


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
      config = config_lib.from_dict(config_lib.upgrade(json.load(f)))
  else:
    raise UsageError("--config is required (e.g. --config configs/toy2d.py)")
  return config_lib.apply_overrides(config, overrides)


def _train(args, overrides):
  from fm import experiment  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides, workdir_fallback=True)
  result = experiment.train_and_evaluate(config, args.workdir)   # resolves (checks) the config first
  if isinstance(result, dict):
    print(json.dumps(result, indent=2))
  import jax  # pylint: disable=g-import-not-at-top  (imported by the trainer)
  if jax.process_index() == 0:
    written = [n for n in ("checkpoints/", "metrics.jsonl", "history.jsonl", "eval.json", "samples/")
               if os.path.exists(os.path.join(args.workdir, n.rstrip("/")))]
    print(f"results in {args.workdir}: {', '.join(written)}")


def _check_num(workdir: str, num: int, kind: str) -> None:
  """UsageError if `--num` samples cannot fit in this machine's memory (or in int32 indices)."""
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  size = 1
  for d in workdir_lib.read_source_info(workdir)["shape"]:
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


def _conditioning(args, workdir: str, num: int) -> dict:
  """`--class`/`--classes`/`--guidance` checked against the run: the sampler's `classes` and `guidance`.

  An unconditional run refuses them; `--classes all` is every class; guidance
  other than 1 needs a run trained with label dropout.
  """
  from fm import recipe  # pylint: disable=g-import-not-at-top
  config = recipe.read_config(workdir)
  num_classes = recipe.num_classes(config)
  given = [f for f, v in (("--class", args.class_), ("--classes", args.classes), ("--guidance", args.guidance))
           if v is not None]
  if not num_classes:
    if given:
      raise UsageError(f"{given[0]} is for class-conditional runs, and {workdir} is unconditional "
                       f"(model.num_classes = 0); sample it without --class, --classes and --guidance")
    return {}
  if args.class_ is not None and args.classes is not None:
    raise UsageError("give either --class K (repeatable) or --classes all, not both")
  if args.classes is not None and args.classes != "all":
    raise UsageError(f"--classes takes only 'all', got {args.classes!r}; pick single classes with --class K")
  classes = list(range(num_classes)) if args.classes == "all" else args.class_
  drop_prob, default_guidance = recipe.cond_settings(config)
  guidance = default_guidance if args.guidance is None else args.guidance
  if args.guidance is not None:
    if not math.isfinite(args.guidance):
      raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if args.guidance != 1 and drop_prob == 0:
      raise UsageError(f"--guidance {args.guidance:g} needs the null class, but {workdir} was trained without "
                       f"label dropout (cond.drop_prob = 0); use --guidance 1")
  if classes is not None:
    from fm.evaluate import conditional  # pylint: disable=g-import-not-at-top
    try:
      conditional.class_labels(classes, num, num_classes)
    except ValueError as e:
      raise UsageError(str(e)) from None
  return {"classes": classes, "guidance": guidance}


def _eval_guidance(args) -> list[float] | None:
  """`--guidance` / `--guidance-sweep` of `fm eval` checked against the run; the sweep's scales or None."""
  if args.guidance is None and args.guidance_sweep is None:
    return None
  from fm import recipe  # pylint: disable=g-import-not-at-top
  config = recipe.read_config(args.workdir)
  flag = "--guidance-sweep" if args.guidance_sweep is not None else "--guidance"
  if not recipe.num_classes(config):
    raise UsageError(f"{flag} is for class-conditional runs, and {args.workdir} is unconditional "
                     f"(model.num_classes = 0)")
  if args.guidance is not None and args.guidance_sweep is not None:
    raise UsageError("give either --guidance S or --guidance-sweep S1,S2,..., not both")
  if args.nfe_sweep and args.guidance_sweep is not None:
    raise UsageError("give either --nfe-sweep or --guidance-sweep, not both")
  try:
    scales = ([float(v) for v in args.guidance_sweep.split(",") if v.strip()] if args.guidance_sweep is not None
              else [args.guidance])
  except ValueError:
    raise UsageError(f"--guidance-sweep takes numbers separated by commas like 1,1.5,2,3, got "
                     f"{args.guidance_sweep!r}") from None
  if not scales or not all(math.isfinite(s) for s in scales):
    raise UsageError(f"{flag} takes finite numbers like 1,1.5,2,3, got {args.guidance_sweep or args.guidance!r}")
  if recipe.cond_settings(config)[0] == 0 and any(s != 1 for s in scales):
    raise UsageError(f"{flag} {args.guidance_sweep or args.guidance} needs the null class, but {args.workdir} was "
                     f"trained without label dropout (cond.drop_prob = 0); only guidance 1 applies")
  return scales if args.guidance_sweep is not None else None


def _check_solver(args) -> None:
  """--solver, --steps and --sde-noise agree (names from fm.solvers; SDEs default to --sde-noise 1)."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  try:
    solvers.check_sampler(args.solver, args.steps)
  except ValueError as e:
    raise UsageError(str(e)) from None
  _check_sde_noise(args, args.solver)


def _check_sde_noise(args, solver: str) -> None:
  """--sde-noise only with an SDE solver (the sampling or the swept one), finite and >= 0; default 1 there."""
  from fm import solvers  # pylint: disable=g-import-not-at-top
  noise = getattr(args, "sde_noise", None)
  if noise is not None and solver not in solvers.SDE_SOLVERS:
    raise UsageError(f"--sde-noise is for the SDE solvers ({', '.join(solvers.SDE_SOLVERS)}), not {solver!r}")
  if noise is not None and not (math.isfinite(noise) and noise >= 0):
    raise UsageError(f"--sde-noise must be a finite number >= 0, got {noise}")
  if solver in solvers.SDE_SOLVERS and noise is None:
    args.sde_noise = 1.0


def _sample(args, overrides):
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  del overrides
  workdir_lib.check_run(args.workdir)   # path problems first: they need no JAX
  out = args.out or os.path.join(args.workdir, "samples.npz")
  _check_out(out)
  from fm import evaluate, solvers  # pylint: disable=g-import-not-at-top
  _check_solver(args)
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
                steps=args.steps, step=args.step, max_steps=args.max_steps, sde_noise=args.sde_noise)
  kwargs.update(_conditioning(args, args.workdir, args.num))
  if kind == "images":
    kwargs.update(batch_size=args.batch_size or 256, png_dir=args.png_dir)
  info = evaluate.sample_workdir(args.workdir, out, **kwargs)
  passes = f", {info['network_passes']} network passes at guidance {info['guidance']:g}" if "guidance" in info else ""
  print(f"NFE {info['nfe']} ({args.solver}{passes}); wrote {info['out']} and {info['png']}")
  if not info.get("success", True):
    print(f"fm: warning: {args.solver} stopped at --max-steps {args.max_steps} before reaching t = 1, so the "
          f"samples in {out} are not the flow's output (recorded as success=False); loosen --rtol/--atol "
          f"or raise --max-steps", file=sys.stderr)


# `fm eval`'s default number of held-out images for bits/dim: a likelihood solve per image batch takes
# seconds per image on a CPU, so 10000 would be hours there.
BPD_NUM = {"accelerator": 10_000, "cpu": 1_000}


def _eval(args, overrides):
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  del overrides
  workdir_lib.check_run(args.workdir)   # path problems first: they need no JAX
  workdir_lib.check_writable_dir(args.workdir, "workdir")
  from fm.evaluate import registry, runner  # pylint: disable=g-import-not-at-top
  kind = workdir_lib.read_source_info(args.workdir)["kind"]
  metrics = registry.parse(args.metrics)
  opts = runner.Options(
      metrics=metrics, num=args.num, seed=args.seed, solver=args.solver, rtol=args.rtol, atol=args.atol,
      steps=args.steps, step=args.step, batch_size=args.batch_size, fid_stats=args.fid_stats,
      inception=args.inception, fid_batch_size=args.fid_batch_size, fid_preprocessing=args.fid_preprocessing,
      fid_subsets=args.fid_subsets, fid_ref_num=args.fid_ref_num,
      bpd_num=args.bpd_num or BPD_NUM["accelerator"],
      bpd_batch_size=args.bpd_batch_size, divergence=args.divergence, num_probes=args.num_probes,
      guidance=args.guidance, sde_noise=args.sde_noise)
  try:
    if args.nfe_sweep:
      from fm.evaluate import nfe_sweep  # pylint: disable=g-import-not-at-top
      _check_sde_noise(args, nfe_sweep.parse(args.nfe_sweep)[0])
    else:
      _check_solver(args)
    names = runner.check(kind, opts, args.nfe_sweep)
  except ValueError as e:
    raise UsageError(str(e)) from None
  scales = _eval_guidance(args)
  if args.step is not None:   # before the note below: a bad step is the one line printed
    from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
    steps = checkpoint.all_steps(args.workdir)
    if args.step not in steps:
      raise UsageError(f"workdir {args.workdir!r} has no checkpoint at step {args.step}; "
                       f"saved steps: {', '.join(map(str, steps))}")
  if "bpd" in names and args.bpd_num is None:
    import dataclasses  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    where = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    opts = dataclasses.replace(opts, bpd_num=BPD_NUM[where])
    if where == "cpu":
      print(f"fm eval: bits/dim on up to {BPD_NUM['cpu']} held-out images (the CPU default: each takes seconds "
            f"here, and the progress bar shows the time left; {BPD_NUM['accelerator']} on a GPU/TPU), "
            f"set --bpd-num to change it", file=sys.stderr)
  if scales:
    try:
      rows, paths, skipped = runner.guidance_sweep(args.workdir, scales, opts)
    except ValueError as e:
      raise UsageError(str(e)) from None
    for why in skipped.values():
      print(why)
    with open(paths["md"]) as f:
      print(f.read(), end="")
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}; every point's records appended to "
          f"{os.path.join(args.workdir, 'eval.jsonl')}")
    return
  if args.nfe_sweep:
    rows, paths, skipped = runner.sweep(args.workdir, args.nfe_sweep, opts)
    for why in dict.fromkeys(skipped.values()):
      print(why)
    if not rows:
      raise UsageError(f"nothing to sweep: {' '.join(dict.fromkeys(skipped.values()))}")
    with open(paths["md"]) as f:
      print(f.read(), end="")
    print(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}; every point's records appended to "
          f"{os.path.join(args.workdir, 'eval.jsonl')}")
    return
  results, skipped = runner.evaluate(args.workdir, opts)
  if not results and skipped:   # nothing that was asked for can be computed
    raise UsageError(f"nothing to evaluate: {' '.join(skipped.values())}")
  print(json.dumps(results, indent=2))
  for why in dict.fromkeys(skipped.values()):
    print(why)
  if results:
    print(f"results in {os.path.join(args.workdir, 'eval.jsonl')} ({len(results)} record(s) appended)",
          file=sys.stderr)   # stdout stays the records' JSON
  for rec in results:
    if rec.get("success") is False:
      print(f"fm: warning: {rec.get('solver', 'the solver')} stopped before reaching the end of the interval for "
            f"{rec['metric']}, so this number (marked success=false in eval.jsonl) is not the flow's; loosen "
            f"--rtol/--atol", file=sys.stderr)


def _fid_stats(args, overrides):
  from fm.evaluate import fid, reference  # pylint: disable=g-import-not-at-top
  if overrides:
    raise UsageError(f"fm fid-stats: unrecognized arguments: --config.{overrides[0][0]}")
  data = {"name": args.data_name, "path": args.data_path, "dataset": args.data_dataset,
          "split": args.data_split, "image_size": args.data_image_size, "limit": args.data_limit}
  try:
    kwargs = reference.load_kwargs(data)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if args.batch_size <= 0:
    raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
  out = args.out or reference.default_out(kwargs)
  if not out.endswith(".npz"):
    raise UsageError(f"--out must end in .npz, got {out!r}")
  if os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
    raise UsageError(f"directory of --out {out!r} does not exist")
  if args.fid_preprocessing not in fid.PREPROCESSING:
    raise UsageError(f"--fid-preprocessing: invalid choice {args.fid_preprocessing!r}; valid: "
                     f"{', '.join(fid.PREPROCESSING)}")
  weights = args.inception or fid.default_weights_path()
  if not os.path.isfile(weights):
    raise UsageError(fid.missing_weights(weights))
  try:
    fid.load_inception(weights)
  except ValueError as e:
    raise UsageError(str(e)) from None
  info = reference.write(kwargs, out, weights, args.batch_size, args.fid_preprocessing)
  print(f"wrote {info['out']}: mu, sigma of {info['num']} images ({info['data']}; "
        f"Inception sha256 {info['inception_sha256'][:12]}; {info['fid_preprocessing']} preprocessing)")


def _sweep(args, overrides):
  from fm import sweep  # pylint: disable=g-import-not-at-top
  from fm.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_path(args.workdir)
  config = _load_config(args, overrides, workdir_fallback=False)
  grid = sweep.parse_grid(args.grid or [])
  _, failures = sweep.run_sweep(config, args.workdir, grid)
  with open(os.path.join(args.workdir, "table.md")) as f:
    print(f.read(), end="")
  figure = os.path.join(args.workdir, "figure.png")
  print(f"results in {os.path.join(args.workdir, 'table.md')}, table.csv"
        + (", figure.png" if os.path.exists(figure) else "") + " and one workdir per point")
  if failures:
    print(f"fm: error: {len(failures)} sweep point(s) failed ({'; '.join(l for l, _ in failures)}), see "
          f"{os.path.join(args.workdir, 'table.md')}", file=sys.stderr)
    return 1
  return 0


def _import_torchcfm(args, overrides):
  from fm import torchcfm  # pylint: disable=g-import-not-at-top
  config = _load_config(args, overrides, workdir_fallback=False)
  try:
    shape = tuple(int(s) for s in args.image_shape.split(","))
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError
  except ValueError:
    raise UsageError(f"--image-shape must be H,W,C like 32,32,3, got {args.image_shape!r}") from None
  info = torchcfm.import_checkpoint(args.checkpoint, config, args.workdir, shape)
  print(f"imported {args.checkpoint} (step {info['step']}, {info['params']:,} parameters) into {info['workdir']}")

def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("several processes (jax.distributed; SLURM / Open MPI / JAX_COORDINATOR_ADDRESS "
                           "are detected without flags)")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="address of process 0's coordinator, or 'auto' for JAX's own detection (TPU pods)")
  g.add_argument("--num-processes", type=int, default=None)
  g.add_argument("--process-id", type=int, default=None)


_LAUNCHER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_PROCESS_ADDRESSES",
                 "TPU_WORKER_HOSTNAMES")


def _distributed(args) -> None:
  """Starts jax.distributed from the flags or the environment (before any other JAX call)."""
  explicit = (args.num_processes, args.process_id)
  if args.coordinator is None and not any(explicit) and not any(k in os.environ for k in _LAUNCHER_ENV):
    return  # a plain single process: do not import JAX just to find that out (fast --help and errors)
  from fm.train import partitioning  # pylint: disable=g-import-not-at-top
  if args.coordinator in (None, "auto"):
    if any(v is not None for v in explicit):
      raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT")
  else:
    if ":" not in args.coordinator:
      raise UsageError(f"--coordinator must be HOST:PORT or auto, got {args.coordinator!r}")
    if any(v is None for v in explicit):
      raise UsageError("--coordinator HOST:PORT needs --num-processes N and --process-id I")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
      raise UsageError(f"--process-id must be in [0, {args.num_processes}) and --num-processes >= 1, "
                       f"got {args.process_id} and {args.num_processes}")
  partitioning.initialize(args.coordinator, args.num_processes, args.process_id)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="fm", description="Flow matching in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  p = sub.add_parser("train", help="train (or resume) a run in --workdir",
                     description="Train a flow; re-running with the same --workdir resumes it. "
                                 "Override config keys with --config.KEY=VALUE.")
  p.add_argument("--config", help="config file, optionally :variant (configs/toy2d.py:smoke); "
                                   "defaults to WORKDIR/config.json when resuming")
  p.add_argument("--workdir", required=True)
  _add_distributed_flags(p)
  p.set_defaults(fn=_train)

  p = sub.add_parser("sample", help="sample a trained run with an ODE or SDE solver (or MeanFlow's jumps)",
                     description="Sample the EMA model of a run's checkpoint; writes OUT (.npz: samples, "
                                 "nfe, solver settings, seed, success) and beside it the same name with .png "
                                 "in place of .npz (WORKDIR/samples.png by default): a scatter plot (toy runs) "
                                 "or an 8x8 grid of the first 64 images (image runs).")
  p.add_argument("--workdir", required=True)
  p.add_argument("--solver", default="dopri5",
                 help="one of fm.solvers.SAMPLERS: ODE (euler, midpoint, heun, rk4, dopri5), SDE (euler_maruyama, "
                      "stochastic_heun) or meanflow (default dopri5)")
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--steps", type=int, default=None, help="steps for fixed-step, SDE and meanflow solvers")
  p.add_argument("--sde-noise", type=float, default=None,
                 help="SDE solvers: diffusion scale a (g = a sigma for sf2m, a s_t for a Gaussian-path flow; "
                      "0 = the ODE; default 1)")
  p.add_argument("--max-steps", type=int, default=4096,
                 help="dopri5: most attempted steps; a solve that hits it is reported (default 4096)")
  p.add_argument("--num", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="output .npz (default WORKDIR/samples.npz)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--batch-size", type=int, default=None, help="images per solver call (image runs; default 256)")
  p.add_argument("--png-dir", default=None, help="also write every image as a PNG here (image runs; for external FID tools)")
  p.add_argument("--class", dest="class_", type=int, action="append", default=None, metavar="K",
                 help="conditional runs: sample class K (repeatable: an equal share of each); default: labels "
                      "drawn from the training label distribution")
  p.add_argument("--classes", default=None, choices=None, metavar="all",
                 help="conditional runs: 'all' = an equal share of every class (the grid: one row per class)")
  p.add_argument("--guidance", type=float, default=None, metavar="S",
                 help="conditional runs: classifier-free guidance scale, v(null) + S (v(y) - v(null)); "
                      "1 = conditional, 0 = unconditional (default: the run's cond.guidance)")
  _add_distributed_flags(p)
  p.set_defaults(fn=_sample)

  p = sub.add_parser("eval", help="evaluate a trained run (appends to WORKDIR/eval.jsonl)",
                     description="Metrics of a run's EMA checkpoint, each appended as one line to "
                                 "WORKDIR/eval.jsonl with its provenance (data, seed, solver, tolerances or steps, "
                                 "NFE, sample count, Inception weights hash, fm's git commit). Image runs: fid, kid, bpd; "
                                 "toy runs: w2, path_energy, nll. Unset options come from the run's eval section.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--metrics", default=None, help="comma-separated (default: all of the run's kind; "
                                                  "with --nfe-sweep: fid,kid for images, w2 for toys)")
  p.add_argument("--num", type=int, default=None, help="generated samples (default 50000 for images, "
                                                        "eval.num_samples for toys)")
  p.add_argument("--seed", type=int, default=None, help="noise / held-out seed (default eval.seed)")
  p.add_argument("--solver", default="dopri5",
                 help="one of fm.solvers.SAMPLERS (default dopri5); SDE solvers and meanflow serve w2 and fid")
  p.add_argument("--sde-noise", type=float, default=None,
                 help="SDE solvers: diffusion scale a (g = a sigma for sf2m, a s_t for a Gaussian-path flow; default 1)")
  p.add_argument("--rtol", type=float, default=None, help="dopri5 (default eval.rtol)")
  p.add_argument("--atol", type=float, default=None, help="dopri5 (default eval.atol)")
  p.add_argument("--steps", type=int, default=None, help="steps for fixed-step solvers")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--batch-size", type=int, default=None, help="images per solver call (default eval.batch_size)")
  p.add_argument("--fid-stats", default=None, help="reference mu/sigma .npz (fm fid-stats, pytorch-fid, clean-fid); "
                                                    "default: computed from the run's data and cached")
  p.add_argument("--inception", default=None, help="FID Inception weights: fm's .npz, NVIDIA's TorchScript .pt or "
                                                    "pytorch-fid's .pth (default fm.evaluate.fid.default_weights_path(), "
                                                    "filled by make fid-weights)")
  p.add_argument("--fid-batch-size", type=int, default=50, help="images per Inception call (default 50)")
  p.add_argument("--fid-preprocessing", default="tf", help="tf (the TF graph's resize, as TTUR / clean-fid "
                                                          "legacy_tensorflow; default) | pytorch-fid")
  p.add_argument("--fid-subsets", type=int, default=5, help="FID spread over this many disjoint subsets of the "
                                                            "samples (default 5; 0 = none)")
  p.add_argument("--fid-ref-num", type=int, default=None,
                 help="FID/KID reference computed from a random subset of this many training images (numpy "
                      "default_rng(0), cached; default: all of them; ~15 images/s through Inception on a CPU)")
  p.add_argument("--bpd-num", type=int, default=None,
                 help=f"held-out images for bits/dim (default {BPD_NUM['accelerator']} on a GPU/TPU, "
                      f"{BPD_NUM['cpu']} on a CPU, where each takes seconds)")
  p.add_argument("--bpd-batch-size", type=int, default=64, help="images per likelihood solve (default 64)")
  p.add_argument("--divergence", default=None, help="exact | hutchinson (default: hutchinson for images, "
                                                     "exact for toys)")
  p.add_argument("--num-probes", type=int, default=1, help="Hutchinson probes per sample (default 1)")
  p.add_argument("--guidance", type=float, default=None, metavar="S",
                 help="conditional runs: guidance scale of the samples (default: the run's cond.guidance)")
  p.add_argument("--guidance-sweep", default=None, metavar="S1,S2,...",
                 help="conditional runs: the metrics (default fid for images, w2 for toys) at each guidance scale, "
                      "e.g. 1,1.5,2,3: writes WORKDIR/guidance_sweep.{md,csv,png}")
  p.add_argument("--nfe-sweep", default=None, metavar="SOLVER:V1,V2,...",
                 help="e.g. euler:1,2,5,10,20,50,100 (steps), dopri5:1e-2,1e-3 (tolerances), "
                      "euler_maruyama:25,50,100 (steps, at --sde-noise) or meanflow:1,2,4 (jumps, MeanFlow runs): "
                      "writes WORKDIR/nfe_sweep_SOLVER.{md,csv,png} (SDE: nfe_sweep_SOLVER_noiseA.*)")
  _add_distributed_flags(p)
  p.set_defaults(fn=_eval)

  p = sub.add_parser("fid-stats", help="FID reference statistics (mu, sigma) of an image source",
                     description="Inception pool3 mean and covariance of every image of a data source "
                                 "(fm.data registry options), written as an .npz that fm eval --fid-stats, "
                                 "pytorch-fid and clean-fid read.")
  p.add_argument("--data.name", dest="data_name", default="images")
  p.add_argument("--data.path", dest="data_path", default="", help="image folder or tarball")
  p.add_argument("--data.dataset", dest="data_dataset", default="", help="tensorflow-datasets name instead")
  p.add_argument("--data.split", dest="data_split", default="train")
  p.add_argument("--data.image_size", dest="data_image_size", type=int, default=0, help="0 = as stored")
  p.add_argument("--data.limit", dest="data_limit", type=int, default=0, help="0 = all images")
  p.add_argument("--out", default=None, help="output .npz (default NAME_SPLIT.npz, e.g. cifar10_train.npz)")
  p.add_argument("--inception", default=None, help="Inception weights (default fm.evaluate.fid.default_weights_path())")
  p.add_argument("--batch-size", type=int, default=50, help="images per Inception call (default 50)")
  p.add_argument("--fid-preprocessing", default="tf", help="tf (default) | pytorch-fid")
  p.set_defaults(fn=_fid_stats)

  p = sub.add_parser("sweep", help="grid of runs with a mean ± std table and a figure",
                     description="Train and evaluate every grid point in WORKDIR/<point>/, then write "
                                 "table.md, table.csv and figure.png. Extra --config.KEY=VALUE apply to all.")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                 help="repeatable, e.g. --grid method=icfm,otcfm --grid seed=0,1,2")
  p.set_defaults(fn=_sweep)

  p = sub.add_parser("import-torchcfm", help="turn a TorchCFM CIFAR-10 checkpoint (.pt) into an fm workdir",
                     description="Read a TorchCFM checkpoint (net_model and ema_model state dicts; torch is not "
                                 "needed) into a new WORKDIR that fm sample and fm eval use like any run.")
  p.add_argument("checkpoint", help="TorchCFM .pt file, e.g. otcfm_cifar10_weights_step_400000.pt")
  p.add_argument("--config", required=True, help="config whose model matches the checkpoint (configs/cifar10.py)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--image-shape", default="32,32,3", help="H,W,C of the images (default 32,32,3)")
  p.set_defaults(fn=_import_torchcfm)
  return parser


# JAX platform -> the package that provides it (cpu is built in).
_PLATFORM_PACKAGES = {"cuda": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "rocm": ("jax_rocm60_plugin",
                      "jax_rocm7_plugin"), "tpu": ("libtpu",)}


def _no_backend(e: RuntimeError) -> str:
  """One sentence for a JAX_PLATFORMS (or jax_platforms) that names no platform this machine has."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  here = ["cpu"] + [p for p, mods in _PLATFORM_PACKAGES.items()
                    if any(importlib.util.find_spec(m) is not None for m in mods)]
  asked = os.environ.get("JAX_PLATFORMS", "")
  first = str(e).split(". (set")[0].split("\n")[0][:200]
  return (f"JAX_PLATFORMS={asked!r} names no platform JAX can start here ({first}); the platforms installed "
          f"here are: {', '.join(here)}; set JAX_PLATFORMS to one of them or unset it")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("fm").setLevel(logging.INFO)
  args = None
  try:
    args, extra = _parser().parse_known_args(argv)
    if getattr(args, "workdir", None) == "":
      raise UsageError("--workdir must not be empty")
    if extra and args.command in ("sample", "eval"):
      raise UsageError(f"fm {args.command}: unrecognized arguments: {' '.join(extra)}")
    overrides = _split_overrides(extra)
    if args.command in ("train", "sample", "eval"):
      _distributed(args)
    code = args.fn(args, overrides)
    if code:
      return code
  except UserError as e:
    print(f"fm: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("fm: interrupted by Ctrl-C (re-running the same command resumes or redoes the work)", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    from fm.io import disk  # pylint: disable=g-import-not-at-top
    if isinstance(e, disk.DiskFull) or disk.is_full(e):
      if not isinstance(e, disk.DiskFull):   # a write outside the places that say what they wrote
        named = [x.filename for x in disk.chain(e) if isinstance(x, OSError) and x.filename]
        path = next((p for p in (*named, getattr(args, "out", None), getattr(args, "png_dir", None),
                                 getattr(args, "workdir", None)) if p), os.getcwd())
        e = disk.DiskFull(os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else path,
                          f"fm {getattr(args, 'command', '')} was writing")
      print(f"fm: error: {e}", file=sys.stderr)
      return 1
    if isinstance(e, RuntimeError) and "Unable to initialize backend" in str(e):
      print(f"fm: error: {_no_backend(e)}", file=sys.stderr)
      return 2
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
