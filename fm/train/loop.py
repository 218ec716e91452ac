"""`train(config, workdir, run, loss_fn, source, mesh)`: the one training loop for every method.

The loop is handed what it trains (`fm.experiment` assembles it with
`fm.recipe` and holds the workdir lock): a resolved config, the built run and
its loss, the data source, the mesh and a factory of its periodic evaluators;
it imports neither the recipe nor the evaluators.

Per dispatch the host runs a jitted, state-donating `multi_step` of up to
`train.steps_per_call` steps; chunks end on log and checkpoint steps. Metrics of
a chunk are fetched one dispatch late at log steps, so the device never waits on
the host. Checkpoints (orbax, atomic) hold the whole state; re-running with the
same workdir resumes from the latest one and replays the same computation, so an
interrupted run ends bitwise equal to an uninterrupted one. SIGTERM/SIGINT save
a checkpoint and raise `Preempted` (a second Ctrl-C aborts at once); a
non-finite step is not applied, the last good state is saved and
`TrainingError` says which settings may change to continue. One `fm train` at a
time works in a workdir (`workdir.lock`); starts, resumes with their changed
settings, and stops go to `history.jsonl` (see `fm.train.workdir`).

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
import re
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import tqdm

from fm import config as config_lib
from fm import data as data_lib
from fm import provenance
from fm.io import files
from fm.train import checkpoint, partitioning, reflow, step as step_lib, tensorboard
from fm.train import state as state_lib
from fm.train import workdir as workdir_lib

__all__ = ["train", "prepare", "TrainingError", "Preempted"]

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
  """Checks a resolved config's (`fm.recipe.resolve`) fit with an existing workdir; writes nothing.

  On resume only `workdir_lib.RESUMABLE` settings may differ from config.json
  (an old-shape config.json is compared in the new shape), train.steps may not
  drop below the latest checkpoint nor change the schedule of the steps taken,
  and the reflow teacher is needed only until its pairs are stored.
  `data.path` may change when the data there is the run's data (same content
  sha256 as in source.json); data whose content changed is refused.
  """
  workdir_lib.check_path(workdir)
  saved = _saved_config(workdir)
  latest = checkpoint.latest_step(workdir) if os.path.isdir(workdir) else None
  allowed = ()
  if saved is not None:
    new = config_lib.to_dict(config)
    allowed = _check_data_identity(saved, new, workdir)
    workdir_lib.resume_changes(saved, new, workdir, allowed)
    workdir_lib.check_steps(saved, new, latest, workdir)
  elif latest is not None:
    raise config_lib.ConfigError(f"workdir {workdir!r} has checkpoints but no config.json")
  if config.reflow.teacher and not reflow.has_pairs(workdir):
    reflow.check_teacher(config.reflow.teacher, config.data)
  if partitioning.jax_process_count() == 1:
    workdir_lib.check_free(workdir)   # before the data is loaded; `lock` decides, after it
  return config


def _check_data_identity(saved: dict, new: dict, workdir: str) -> tuple:
  """("data.path",) if only the data's path moved (same content); ConfigError if its content changed.

  The content key is `fm.data.identity` (sha256 of a tarball, of a folder's
  listing), compared with the one source.json holds.
  """
  before = None
  if os.path.isfile(os.path.join(workdir, workdir_lib.SOURCE_FILE)):
    info = workdir_lib.read_source_info(workdir)
    before = info.get("sha256")
    if before is None:   # a run from before source.json held it: its description names it
      found = re.search(r"(?:listing_)?sha256=([0-9a-f]{64})", info.get("description", ""))
      before = found and found.group(1)
  name, options = data_lib.split_options(new.get("data", {}))
  old_name, _ = data_lib.split_options(saved.get("data", {}))
  if before is None or name != old_name:
    return ()
  try:
    now = data_lib.identity(name, **options)
  except (ValueError, OSError) as e:
    raise config_lib.ConfigError(f"bad config 'data': {e}") from e
  if now is None:
    return ()
  old_path, new_path = saved.get("data", {}).get("path"), new.get("data", {}).get("path")
  if now != before:
    moved = f"data.path {new_path!r} (was {old_path!r})" if new_path != old_path else f"data.path {new_path!r}"
    raise config_lib.ConfigError(
        f"the data at {moved} is not the data this run trained on (content sha256 {now[:12]}..., source.json "
        f"has {before[:12]}...); resume with the original data, or train on this data in a new workdir")
  return ("data.path",) if new_path != old_path else ()


def _saved_config(workdir: str) -> dict | None:
  """config.json in the canonical shape, or None if there is none."""
  if not os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return None
  return config_lib.to_dict(workdir_lib.read_config(workdir))


def _warn_unconverged(coupling, stats_list, first: int, last: int) -> int:
  """Counts the steps in `(first, last]` whose coupling solver did not converge; warns once if any."""
  count = sum(int(s["count"]) for s in stats_list)
  bad = count - int(round(sum(float(s["sums"]["converged"]) for s in stats_list)))
  while hasattr(coupling, "coupling"):  # wrappers (`Scoped`, `WithinClass`) name their inner coupling
    coupling = coupling.coupling
  if bad:
    hint = ("raise coupling.max_iterations or coupling.threshold" if hasattr(coupling, "max_iterations")
            else "the JAX auction hit its round limit; try another coupling.solver")
    log.warning("warning: the %s coupling did not converge on %d of %d batches in steps %d-%d (%.0f%%), "
                "so those pairs are approximate: %s", type(coupling).__name__, bad, count, first + 1, last,
                100.0 * bad / max(count, 1), hint)
  return bad


def _duration(seconds: float) -> str:
  """`42 s`, `7 min`, `3.2 h`: a rough time for progress lines."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def _start(config, workdir: str, abstract, teacher_step) -> tuple[object, int]:
  """Restores the newest readable checkpoint (or None at step 0); then writes config.json and history.

  Nothing in the workdir is written before the state is in hand, so a run that
  cannot start leaves config.json as it was.
  """
  state, start, failures = checkpoint.restore_newest_readable(workdir, abstract)
  if failures and state is None:
    step, error = failures[0]
    raise config_lib.ConfigError(
        f"no checkpoint in {workdir!r} can be read (checkpoint {step}: {error}); move checkpoints/ away "
        f"to start over")
  for step, error in failures:
    moved = checkpoint.set_aside(workdir, step)
    log.warning("warning: checkpoint %d cannot be read (%s); moved it to %s and resuming from checkpoint %d",
                step, error, moved, start)
  start = start or 0
  saved = _saved_config(workdir)
  new = config_lib.to_dict(config)
  allowed = _check_data_identity(saved, new, workdir) if saved is not None else ()
  changes = workdir_lib.resume_changes(saved, new, workdir, allowed) if saved is not None else {}
  finished = saved is not None and start >= config.train.steps
  if finished:
    log.info("%s: already finished at step %d", workdir, start)
    if not changes and not failures:
      return state, start   # nothing to record: the workdir is left as it is
  files.write_json(os.path.join(workdir, "config.json"), new, sort_keys=True)
  prov = provenance.record()
  files.write_json(os.path.join(workdir, "provenance.json"), prov, sort_keys=True)
  extra = {"changes": changes} if changes else {}
  extra["provenance"] = prov
  if failures:
    extra["unreadable_checkpoints"] = [step for step, _ in failures]
  if teacher_step is not None:
    extra["teacher"], extra["teacher_step"] = config.reflow.teacher, teacher_step
  workdir_lib.append_history(workdir, "resume" if start else "start", start, **extra)
  for k, (a, b) in changes.items():
    log.info("%s: %r -> %r from step %d (recorded in %s)", k, a, b, start, workdir_lib.HISTORY_FILE)
  if start and not finished:
    log.info("%s: resuming from step %d of %d", workdir, start, config.train.steps)
  return state, start


class _NonFinite(Exception):
  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


def train(config: ml_collections.ConfigDict, workdir: str, run, loss_fn, source, mesh, *,
          make_evaluators=None, teacher_step: int | None = None):
  """Trains to `config.train.steps`, resuming from the workdir; returns `(state, start step)`.

  Called with the workdir lock held (`workdir_lib.lock`) and a resolved config
  that passed `prepare`. `run` (`fm.recipe.Run`) and `loss_fn(params, key, x0, x1)`
  are built for `source.shape` on `mesh`. `make_evaluators()` (called once the
  run is known to go on, so a finished run's workdir is left as it is) gives the
  evaluators called every `eval.every` steps as `f(step, ema_params, writer) -> dict`.
  """
  tc = config.train
  data_sharding = partitioning.batch_sharding(mesh) if mesh.size > 1 else None

  lr_schedule = state_lib.make_schedule(tc.lr, tc.steps, tc.schedule, tc.warmup_steps)
  multi_step = jax.jit(
      step_lib.make_multi_step(loss_fn, run.optimizer, source.batch_fn, tc.ema_decay,
                               data_sharding),
      donate_argnums=0)
  abstract = partitioning.abstract_replicated(jax.eval_shape(run.init_state), mesh)
  state, start = _start(config, workdir, abstract, teacher_step)
  if start >= tc.steps:
    return state, start
  if state is None:
    state = partitioning.init_replicated(run.init_state, mesh)
  workdir_lib.write_source_info(workdir, source)   # process 0
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints)
  data = None if source.data is None else partitioning.replicate(source.data, mesh)
  metrics_path = os.path.join(workdir, workdir_lib.METRICS_FILE)
  workdir_lib.trim_metrics(workdir, start)
  evaluators = list(make_evaluators()) if make_evaluators is not None else []
  eval_every = config.eval.get("every", 0) if evaluators else 0
  writer = tensorboard.Writer(workdir, enabled=config.train.get("tensorboard", True))

  stop = {"signum": None}
  def on_signal(signum, frame):
    del frame
    if stop["signum"] is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: abort at once
    stop["signum"] = signum
    if signum == signal.SIGINT:
      log.warning("Ctrl-C: saving a checkpoint after this chunk (Ctrl-C again to abort at once)")
  old_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGTERM, signal.SIGINT):
      old_handlers[s] = signal.signal(s, on_signal)

  pending = []        # stats of chunks since the last fetch
  to_log = None       # (step, stats list) fetched after the next dispatch
  last_time, last_step = time.time(), start   # when and where training last resumed after a pause
  prev_row_step = start

  def fetch(stats_list):
    """Host copy of chunk stats; raises _NonFinite at a step that was not applied."""
    stats_list = jax.device_get(stats_list)
    for s in stats_list:
      if s["failed"]:
        raise _NonFinite(int(s["step"]))
    return stats_list

  def write_metrics(at_step, stats_list):
    nonlocal prev_row_step
    count = sum(int(s["count"]) for s in stats_list)
    row = {"step": at_step}
    for k in stats_list[0]["sums"]:
      row[k] = float(sum(float(s["sums"][k]) for s in stats_list) / max(count, 1))
    # the average since the host last paused training (start, checkpoint, sample grid): a row's
    # own interval is unknown without a sync (on CPU a chunk with a host callback returns only when
    # done, so two rows can be fetched back to back)
    row["steps_per_sec"] = (at_step - last_step) / max(time.time() - last_time, 1e-9)
    row["examples_per_sec"] = row["steps_per_sec"] * tc.batch_size
    row["lr"] = float(lr_schedule(at_step - 1))
    if "converged" in row:
      row["coupling_unconverged"] = _warn_unconverged(run.method.coupling, stats_list, prev_row_step, at_step)
    prev_row_step = at_step
    files.append_jsonl(metrics_path, row)   # process 0
    writer.scalars(row, at_step)
    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
    if bar.disable and files.is_writer():
      log.info("step %d loss %.5f (%.3g steps/s, about %s to step %d)", at_step, row["loss"],
               row["steps_per_sec"], _duration((tc.steps - at_step) / max(row["steps_per_sec"], 1e-9)), tc.steps)

  step = start
  try:
    with tqdm.tqdm(total=tc.steps, initial=start, desc=os.path.basename(os.path.normpath(workdir)),
                   unit="step", dynamic_ncols=True,
                   disable=None if files.is_writer() else True) as bar:
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
        pause = end % tc.checkpoint_every == 0 or end == tc.steps or (eval_every and end % eval_every == 0)
        if pause and to_log is not None:   # the host is about to pause training: log first
          write_metrics(to_log[0], fetch(to_log[1]))
          to_log = None
        if end % tc.checkpoint_every == 0 or end == tc.steps:
          fetch(pending)
          ckpt.save(end, state)
        if eval_every and end % eval_every == 0:
          for evaluator in evaluators:
            writer.scalars(evaluator(end, state.ema_params, writer), end)
        if pause:
          last_time, last_step = time.time(), end
      if to_log is not None:
        write_metrics(to_log[0], fetch(to_log[1]))
      if step < tc.steps:  # stopped by a signal (on any process)
        fetch(pending)
        ckpt.save(step, state)
        signum = stop["signum"] or signal.SIGTERM
        workdir_lib.append_history(workdir, "stopped", step, signal=signal.Signals(signum).name)
        raise Preempted(step, signum)
  except _NonFinite as e:
    raise _stop_non_finite(workdir, ckpt, state, e.step) from None
  except KeyboardInterrupt:
    workdir_lib.append_history(workdir, "aborted", ckpt.latest_step() or 0, signal="SIGINT")
    raise
  finally:
    ckpt.close()
    writer.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  return state, start


def _stop_non_finite(workdir: str, ckpt, state, failed_at: int) -> TrainingError:
  """Saves the last good (finite) state as a checkpoint and returns the error that says how to go on."""
  good = int(jax.device_get(state.step))
  ckpt.save(good, state)   # a no-op if that step is already saved
  ckpt.wait()
  workdir_lib.append_history(workdir, "non_finite", failed_at + 1, saved_step=good)
  return TrainingError(
      f"non-finite loss, gradient or parameters at step {failed_at + 1}, so the run stopped and the last good "
      f"state is saved as checkpoint {good} in {workdir}; to continue from it re-run with a lower "
      f"--config.train.lr or a --config.train.grad_clip > 0 (both may change on resume and the change "
      f"is recorded in {workdir_lib.HISTORY_FILE})")
