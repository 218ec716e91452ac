"""`train_and_evaluate(config, workdir)`: the one training loop for every method.

Per dispatch the host runs a jitted, state-donating `multi_step` of up to
`train.steps_per_call` steps; chunks end on log and checkpoint steps. Metrics of
a chunk are fetched one dispatch late at log steps, so the device never waits on
the host. Checkpoints (orbax, atomic) hold the whole state; re-running with the
same workdir resumes from the latest one and replays the same computation, so an
interrupted run ends bitwise equal to an uninterrupted one. SIGTERM/SIGINT save
a checkpoint and raise `Preempted`; a non-finite loss raises `TrainingError`
without saving, leaving the last good checkpoint as the latest.

Data parallel over every device of every process (`fm.train.partitioning`):
the batch is sharded, the state replicated; with several processes only
process 0 writes config.json, source.json, metrics and TensorBoard, all of them
save checkpoints together, and a signal on any process stops all of them at the
same step (agreed by a tiny collective per dispatch).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import tqdm

from fm import config as config_lib
from fm import data as data_lib
from fm.data import pairs as pairs_lib
from fm.train import checkpoint, partitioning, reflow, run as run_lib, step as step_lib, tensorboard
from fm.train import state as state_lib

__all__ = ["train_and_evaluate", "train", "prepare", "TrainingError", "Preempted"]

log = logging.getLogger("fm")


class TrainingError(RuntimeError):
  """The loss or gradient became NaN/Inf."""


class Preempted(Exception):
  """SIGTERM/SIGINT: a checkpoint was saved at `step`; re-run to resume."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                     f"checkpoint saved, re-run the same command to resume")
    self.step, self.signum = step, signum


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """Validates the config and its fit with an existing workdir; writes nothing."""
  config_lib.validate(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"workdir {workdir!r} exists and is not a directory")
  saved_path = os.path.join(workdir, "config.json")
  if os.path.isfile(saved_path):
    with open(saved_path) as f:
      saved = json.load(f)
    changed = [k for k in config_lib.diff(saved, config_lib.to_dict(config)) if k != "train.steps"]
    if changed:
      old, new = config_lib.flatten(saved), config_lib.flatten(config_lib.to_dict(config))
      k = changed[0]
      raise config_lib.ConfigError(
          f"workdir {workdir!r} holds a run with a different config ({k}={old.get(k)!r}, now "
          f"{new.get(k)!r}{' and more' if len(changed) > 1 else ''}); use a new workdir, as only "
          f"train.steps may change on resume")
  elif checkpoint.latest_step(workdir) is not None:
    raise config_lib.ConfigError(f"workdir {workdir!r} has checkpoints but no config.json")
  if config.reflow.teacher:
    reflow.check_teacher(config.reflow.teacher, config.data)
  return config


def _write_json_atomic(path: str, obj) -> None:
  if not partitioning.is_writer():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _trim_metrics(path: str, max_step: int) -> None:
  """Drops metric lines past the restored step (a killed run is replayed from there)."""
  if not partitioning.is_writer() or not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= max_step]
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def train(config: ml_collections.ConfigDict, workdir: str):
  """Trains to `config.train.steps`; returns the final `TrainState`."""
  config = prepare(config, workdir)
  tc = config.train
  os.makedirs(workdir, exist_ok=True)
  _write_json_atomic(os.path.join(workdir, "config.json"), config_lib.to_dict(config))
  name, options = data_lib.split_options(config_lib.to_dict(config.data))
  source = data_lib.make(name, tc.batch_size, **options)
  if config.reflow.teacher:
    pairs = reflow.load_or_make_pairs(
        workdir, config.reflow.teacher, source.sample_x0, config.reflow.num_pairs, config.seed,
        solver=config.reflow.solver, rtol=config.reflow.rtol, atol=config.reflow.atol,
        steps=config.reflow.steps)
    source = pairs_lib.source(source, pairs, tc.batch_size,
                              f"reflow pairs from teacher {config.reflow.teacher} on {source.description}")
  if partitioning.is_writer():
    run_lib.write_source_info(workdir, source)
  # Data parallelism (fm.train.partitioning): batch sharded over every device, state replicated.
  mesh = partitioning.make_mesh()
  run = run_lib.build(config, source.shape, mesh=mesh)
  data_sharding = partitioning.batch_sharding(mesh) if mesh.size > 1 else None

  lr_schedule = state_lib.make_schedule(tc.lr, tc.steps, tc.schedule, tc.warmup_steps)
  multi_step = jax.jit(
      step_lib.make_multi_step(run_lib.loss_fn(run), run.optimizer, source.batch_fn, tc.ema_decay,
                               data_sharding),
      donate_argnums=0)
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints)
  abstract = partitioning.abstract_replicated(jax.eval_shape(run.init_state), mesh)
  start = ckpt.latest_step()
  if start is None:
    state = partitioning.init_replicated(run.init_state, mesh)
    start = 0
  else:
    state = ckpt.restore(abstract, start)
  data = None if source.data is None else partitioning.replicate(source.data, mesh)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  _trim_metrics(metrics_path, start)
  from fm import evaluate  # pylint: disable=g-import-not-at-top
  evaluators = evaluate.periodic(run, source, config, workdir)
  eval_every = config.eval.get("every", 0) if evaluators else 0
  writer = tensorboard.Writer(workdir, enabled=config.train.get("tensorboard", True))

  stop = {"signum": None}
  def on_signal(signum, frame):
    del frame
    stop["signum"] = signum
  old_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGTERM, signal.SIGINT):
      old_handlers[s] = signal.signal(s, on_signal)

  pending = []        # stats of chunks since the last fetch
  to_log = None       # (step, stats list) fetched after the next dispatch
  last_time, last_step = time.time(), start

  def fetch(stats_list):
    """Host copy of chunk stats; raises TrainingError on a non-finite step."""
    stats_list = jax.device_get(stats_list)
    for s in stats_list:
      if s["failed"]:
        ckpt.wait()
        raise TrainingError(
            f"non-finite loss or gradient at step {int(s['step'])}; stopped without saving, "
            f"the last good checkpoint is step {ckpt.latest_step()} in {workdir} "
            f"(lower train.lr or set train.grad_clip)")
    return stats_list

  def write_metrics(at_step, stats_list):
    nonlocal last_time, last_step
    count = sum(int(s["count"]) for s in stats_list)
    row = {"step": at_step}
    for k in stats_list[0]["sums"]:
      row[k] = float(sum(float(s["sums"][k]) for s in stats_list) / max(count, 1))
    now = time.time()
    row["steps_per_sec"] = (at_step - last_step) / max(now - last_time, 1e-9)
    row["examples_per_sec"] = row["steps_per_sec"] * tc.batch_size
    row["lr"] = float(lr_schedule(at_step - 1))
    last_time, last_step = now, at_step
    if partitioning.is_writer():
      with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    writer.scalars(row, at_step)
    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
    if bar.disable and partitioning.is_writer():
      log.info("step %d loss %.5f (%.0f steps/s)", at_step, row["loss"], row["steps_per_sec"])

  step = start
  try:
    with tqdm.tqdm(total=tc.steps, initial=start, desc=os.path.basename(os.path.normpath(workdir)),
                   unit="step", dynamic_ncols=True,
                   disable=None if partitioning.is_writer() else True) as bar:
      while step < tc.steps and not partitioning.any_process(stop["signum"] is not None):
        end = min(step + tc.steps_per_call, _next_multiple(step, tc.log_every),
                  _next_multiple(step, tc.checkpoint_every), tc.steps,
                  _next_multiple(step, eval_every) if eval_every else tc.steps)
        state, stats = multi_step(state, np.int32(end - step), data)
        bar.update(end - step)
        pending.append(stats)
        if to_log is not None:  # previous log point, fetched while this chunk runs
          write_metrics(to_log[0], fetch(to_log[1]))
          to_log = None
        step = end
        if end % tc.log_every == 0 or end == tc.steps:
          to_log, pending = (end, pending), []
        if end % tc.checkpoint_every == 0 or end == tc.steps:
          if to_log is not None:
            write_metrics(to_log[0], fetch(to_log[1]))
            to_log = None
          fetch(pending)
          ckpt.save(end, state)
        if eval_every and end % eval_every == 0:
          for evaluator in evaluators:
            writer.scalars(evaluator(end, state.ema_params, writer), end)
      if to_log is not None:
        write_metrics(to_log[0], fetch(to_log[1]))
      if step < tc.steps:  # stopped by a signal (on any process)
        fetch(pending)
        ckpt.save(step, state)
        raise Preempted(step, stop["signum"] or signal.SIGTERM)
  finally:
    ckpt.close()
    writer.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains, then (if `config.eval.at_end`) evaluates the EMA model into `eval.json`."""
  state = train(config, workdir)
  if config.eval.get("at_end", True):
    from fm import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.evaluate_workdir(workdir)
  return state
