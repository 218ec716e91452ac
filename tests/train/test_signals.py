"""Killing training: SIGKILL then resume is bitwise exact; SIGTERM saves and exits."""
import os
import signal
import subprocess
import time

import chex
import jax
import pytest

from fm.train import checkpoint, loop, run as run_lib
from train.helpers import CONFIG, PYTHON, cli_args, restore_state, subprocess_env, tiny_config

LONG = dict(train__steps=2400, train__steps_per_call=50, train__log_every=100,
            train__checkpoint_every=200, eval__at_end="false")


def _train_cmd(workdir, **kw):
  return [PYTHON, "-m", "fm", "train", "--config", CONFIG + ":smoke", "--workdir", workdir, *cli_args(**kw)]


def _wait_for_step(workdir, proc, min_step, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    step = checkpoint.latest_step(workdir)
    if step is not None and step >= min_step:
      return step
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.communicate()}")
    time.sleep(0.02)
  raise AssertionError("training made no progress")


def test_sigkill_then_resume_is_bitwise_exact(tmp_path):
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(killed, **LONG), env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _wait_for_step(killed, proc, 400)
  time.sleep(0.137)  # somewhere mid-chunk or mid-save
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = checkpoint.latest_step(killed)
  assert killed_at < 2400, "run finished before it was killed; make it longer"
  res = subprocess.run(_train_cmd(killed, **LONG), env=subprocess_env(), capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  reference = str(tmp_path / "reference")
  config = tiny_config(**LONG)
  loop.train(config, reference)
  a, b = restore_state(reference, config), restore_state(killed, config)
  assert int(a.step) == int(b.step) == 2400
  chex.assert_trees_all_equal(a, b)


def test_sigterm_saves_checkpoint_and_exits(tmp_path):
  workdir = str(tmp_path / "run")
  kw = dict(LONG, train__steps=10_000_000, train__checkpoint_every=1_000_000)
  proc = subprocess.Popen(_train_cmd(workdir, **kw), env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert "SIGTERM" in err and "Traceback" not in err
  step = checkpoint.latest_step(workdir)
  assert step is not None and 0 < step < 1_000_000
  assert int(restore_state(workdir, tiny_config(**kw)).step) == step


@pytest.mark.slow
def test_two_devices_data_parallel(tmp_path):
  """Batch sharded over 2 host devices trains and evaluates."""
  env = subprocess_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  workdir = str(tmp_path / "dp")
  res = subprocess.run(_train_cmd(workdir, method="otcfm"), env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  assert os.path.exists(os.path.join(workdir, "eval.json"))
