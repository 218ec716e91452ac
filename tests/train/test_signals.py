"""Stopping training: SIGKILL then resume is bitwise exact; SIGTERM/Ctrl-C save and exit; a second Ctrl-C aborts.

No test waits on a clock: each signal is sent by the training process itself at
a known step (from a patched checkpoint save or metrics write), so where it
lands in the loop is the same on every run, however loaded the machine is.
"""
import json
import os
import signal
import subprocess

import chex
import pytest

from fm import experiment
from fm import cli
from fm.train import checkpoint, tensorboard
from train.helpers import CONFIG, PYTHON, cli_args, restore_state, subprocess_env, tiny_config

SMOKE = CONFIG + ":smoke"
LONG = dict(train__steps=600, train__steps_per_call=50, train__log_every=100,
            train__checkpoint_every=200, eval__at_end="false")

# Runs `fm ARGS...` and SIGKILLs itself right after the metrics row of step KILL_AT is written.
_KILL_RUNNER = """
import os, signal, sys
from fm import cli
from fm.train import tensorboard
kill_at = int(sys.argv[1])
real = tensorboard.Writer.scalars
def scalars(self, row, step):
  real(self, row, step)
  if step == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
tensorboard.Writer.scalars = scalars
sys.exit(cli.main(sys.argv[2:]))
"""


def _train_argv(workdir, **kw):
  return ["train", "--config", SMOKE, "--workdir", workdir, *cli_args(**kw)]


def test_sigkill_then_resume_is_bitwise_exact(tmp_path):
  killed = str(tmp_path / "killed")
  res = subprocess.run([PYTHON, "-c", _KILL_RUNNER, "500", *_train_argv(killed, **LONG)],
                       env=subprocess_env(), capture_output=True, text=True)
  assert res.returncode == -signal.SIGKILL, res.stderr
  assert checkpoint.latest_step(killed) == 400
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f][-1] == 500   # written past the checkpoint: replayed on resume
  assert cli.main(_train_argv(killed, **LONG)) == 0
  reference = str(tmp_path / "reference")
  config = tiny_config(**LONG)
  experiment.train(config, reference)
  a, b = restore_state(reference, config), restore_state(killed, config)
  assert int(a.step) == int(b.step) == 600
  chex.assert_trees_all_equal(a, b)
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == [100, 200, 300, 400, 500, 600]


def _signal_at(monkeypatch, step, *signums):
  """Sends `signums` to this process right after the metrics row of `step` is written."""
  real = tensorboard.Writer.scalars

  def scalars(self, row, at_step):
    real(self, row, at_step)
    if at_step == step:
      for signum in signums:
        os.kill(os.getpid(), signum)
        for _ in range(100):   # the Python-level handler runs at the next bytecode boundary
          pass
  monkeypatch.setattr(tensorboard.Writer, "scalars", scalars)


# SIGINT is slow: one handler serves both signals (fm/train/loop.py), the SIGTERM case runs its save
# and exit by default, and test_second_ctrl_c_aborts_at_once sends SIGINT through it by default.
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_checkpoint_and_exits(tmp_path, monkeypatch, capsys, signum):
  workdir = str(tmp_path / "run")
  _signal_at(monkeypatch, 300, signum)
  code = cli.main(_train_argv(workdir, **LONG))
  err = capsys.readouterr().err
  assert code == 128 + signum and signal.Signals(signum).name in err and "Traceback" not in err
  # The signal lands after step 300's row; the chunk running then (to 350) ends, is saved, and the run stops.
  assert checkpoint.latest_step(workdir) == 350
  assert int(restore_state(workdir, tiny_config(**LONG)).step) == 350
  with open(os.path.join(workdir, "history.jsonl")) as f:
    assert json.loads(f.readlines()[-1])["event"] == "stopped"
  assert cli.main(_train_argv(workdir, **LONG)) == 0     # re-running resumes and finishes
  assert checkpoint.latest_step(workdir) == 600


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  _signal_at(monkeypatch, 300, signal.SIGINT, signal.SIGINT)
  code = cli.main(_train_argv(workdir, **LONG))
  err = capsys.readouterr().err
  assert code == 130 and "interrupted" in err and "Traceback" not in err
  assert checkpoint.latest_step(workdir) == 200   # nothing saved after the second Ctrl-C
  with open(os.path.join(workdir, "history.jsonl")) as f:
    assert json.loads(f.readlines()[-1])["event"] == "aborted"
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored


@pytest.mark.slow
def test_two_devices_data_parallel(tmp_path):
  """Batch sharded over 2 host devices trains and evaluates."""
  env = subprocess_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  workdir = str(tmp_path / "dp")
  res = subprocess.run([PYTHON, "-m", "fm", *_train_argv(workdir, method="otcfm")], env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  assert os.path.exists(os.path.join(workdir, "eval.json"))
