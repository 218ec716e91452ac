"""Data parallelism proven equal to one device: 4 forced host devices, 2 processes, kill and restart.

Every run happens in a subprocess whose device count is fixed by
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (and `jax.distributed`
over localhost with gloo for several processes); this process only compares
the checkpoints, metrics, eval.json and sample files they leave.

Tolerance: `PARAM_ATOL = 1e-6` on parameters of magnitude ~1 after 40 Adam
steps (float32 eps is 1.2e-7). With the global coupling every device sees the
same pairs and the same random draws (partitionable threefry), so the only
difference from one device is the order in which XLA sums the loss and the
gradients across devices (an all-reduce of per-device partial sums instead of
one sum); measured here: at most 6e-8. A different pairing is four to five
orders larger (local scope on 4 devices: ~1e-2), so the check can fail.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from train.helpers import PYTHON, ROOT, cli_args, subprocess_env

WORKER = os.path.join(ROOT, "tests", "train", "parallel_worker.py")
PARAM_ATOL = 1e-6
TIMEOUT = 900


def _env(devices: int) -> dict:
  env = subprocess_env()
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _worker(devices: int, *args: str) -> None:
  res = subprocess.run([PYTHON, WORKER, *args], env=_env(devices), capture_output=True, text=True,
                       timeout=TIMEOUT)
  assert res.returncode == 0, res.stderr[-4000:]
  assert f"devices={devices} processes=1" in res.stdout


def _train(workdir: str, **kw) -> str:
  return f"train={workdir}=" + ",".join(f"{k}:{v}" for k, v in kw.items())


def _state(workdir: str):
  """The latest checkpointed TrainState of a run, as NumPy, restored onto this process's devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from fm import recipe
  from fm.train import checkpoint, partitioning  # pylint: disable=g-import-not-at-top
  config = recipe.read_config(workdir)
  run = recipe.build(config, recipe.read_source_info(workdir)["shape"])
  abstract = partitioning.abstract_replicated(jax.eval_shape(run.init_state), partitioning.make_mesh())
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  state = ckpt.restore(abstract)
  ckpt.close()
  return jax.tree_util.tree_map(np.asarray, state)


def _max_diff(a, b) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(la, lb))


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _samples(directory: str, name: str) -> np.ndarray:
  with np.load(os.path.join(directory, name)) as f:
    return f["samples"], int(np.sum(f["nfe"] if "nfe" in f else f["nfe_total"]))


def _assert_same_run(a: str, b: str) -> None:
  """Runs in workdirs a and b trained the same: parameters, metrics, eval and samples."""
  sa, sb = _state(a), _state(b)
  assert int(sa.step) == int(sb.step)
  assert _max_diff(sa.params, sb.params) <= PARAM_ATOL
  assert _max_diff(sa.ema_params, sb.ema_params) <= PARAM_ATOL
  ma, mb = _metrics(a), _metrics(b)
  assert [r["step"] for r in ma] == [r["step"] for r in mb]
  for ra, rb in zip(ma, mb):
    for k in ("loss", "cost_before", "cost_after"):
      if k in ra:
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, err_msg=k)
  if os.path.exists(os.path.join(a, "eval.json")):
    with open(os.path.join(a, "eval.json")) as f:
      ea = json.load(f)
    with open(os.path.join(b, "eval.json")) as f:
      eb = json.load(f)
    assert ea["nfe"] == eb["nfe"]
    np.testing.assert_allclose(ea["w2"], eb["w2"], rtol=1e-4)
  for name in ("euler.npz", "dopri5.npz"):
    if os.path.exists(os.path.join(a, name)) and os.path.exists(os.path.join(b, name)):
      xa, na = _samples(a, name)
      xb, nb = _samples(b, name)
      assert na == nb
      if xa.dtype == np.uint8:  # images: rounding may flip where x sits on a boundary
        assert np.mean(xa != xb) < 1e-3 and np.max(np.abs(xa.astype(int) - xb)) <= 1
      else:
        np.testing.assert_allclose(xa, xb, atol=1e-4)
      with np.load(os.path.join(a, name)) as fa, np.load(os.path.join(b, name)) as fb:
        if "labels" in fa:   # a conditional run: the same labels at the same guidance
          np.testing.assert_array_equal(fa["labels"], fb["labels"])
          assert float(fa["guidance"]) == float(fb["guidance"])



@pytest.fixture(scope="module")
def otcfm_runs(tmp_path_factory):
  """otcfm trained on 1 device (global and local scope) and on 4; the 1-device run sampled on 4.

  (Local scope on 4 devices pairing each shard on its own is checked directly in
  tests/couplings/test_couplings_scope.py.)
  """
  root = tmp_path_factory.mktemp("parallel")
  one, four = str(root / "one"), str(root / "four")
  _worker(1, _train(f"{one}/global", method="otcfm"),
          _train(f"{one}/local", method="otcfm", coupling__scope="local"))
  _worker(4, _train(f"{four}/global", method="otcfm"), f"sample={one}/global={four}/resampled")
  return one, four


def test_otcfm_four_devices_equal_one(otcfm_runs):
  one, four = otcfm_runs
  _assert_same_run(os.path.join(one, "global"), os.path.join(four, "global"))


def test_local_scope_on_one_device_is_global(otcfm_runs):
  one, _ = otcfm_runs
  assert _max_diff(_state(os.path.join(one, "local")).params, _state(os.path.join(one, "global")).params) == 0


def test_sampling_on_four_devices_equals_one(otcfm_runs):
  """The same checkpoint sampled on 4 devices: Euler samples and dopri5 NFE as on 1 device."""
  one, four = otcfm_runs
  for name, atol in (("euler.npz", 1e-6), ("dopri5.npz", 1e-5)):
    xa, na = _samples(os.path.join(one, "global"), name)
    xb, nb = _samples(os.path.join(four, "resampled"), name)
    assert na == nb
    np.testing.assert_allclose(xa, xb, atol=atol, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["icfm", "sbcfm"])
def test_four_devices_equal_one(tmp_path, method):
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  _worker(1, _train(one, method=method))
  _worker(4, _train(four, method=method))
  _assert_same_run(one, four)


@pytest.mark.slow
@pytest.mark.parametrize("conditional", [False, True])
def test_image_smoke_four_devices_equal_one(tmp_path, conditional):
  """Conditional: CIFAR-10's labels drawn with the images, label dropout, a guided (2B-batch) grid and samples."""
  from fm import data, models  # pylint: disable=g-import-not-at-top
  if "unet" not in models.NAMES:
    pytest.skip("fm.models has no 'unet' yet")
  # beside the checkout (../shared), or beside a worktree's parent (../../shared)
  candidates = [os.path.join(ROOT, *[".."] * up, "shared", "data", "cifar10-jpeg.tar.gz") for up in (1, 2)]
  path = next((p for p in candidates if os.path.exists(p)), None)
  if path is None:
    pytest.skip(f"no image data at {candidates[0]}")
  del data
  kw = {"config": os.path.join(ROOT, "configs", "cifar10.py") + ":smoke", "data__limit": "64",
        "data__path": os.path.abspath(path), "train__steps": "6", "train__steps_per_call": "3",
        "train__log_every": "3", "train__checkpoint_every": "6", "train__batch_size": "8",
        "eval__every": "6", "eval__at_end": "False",
        "model__dropout": "0.1"}  # dropout masks drawn on sharded activations equal one device's
  if conditional:
    kw.update({"model__num_classes": "10", "cond__drop_prob": "0.5", "cond__guidance": "2.0"})
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  _worker(1, _train(one, **kw))
  _worker(4, _train(four, **kw))
  _assert_same_run(one, four)


# --- several processes ------------------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir: str, port: int, steps: int, *, extra=()) -> list[subprocess.Popen]:
  """2 processes x 2 devices running `fm train` on localhost."""
  procs = []
  for pid in range(2):
    cmd = [PYTHON, "-m", "fm", "train", "--config", os.path.join(ROOT, "configs", "toy2d.py") + ":smoke",
           "--workdir", workdir, *cli_args(method="otcfm", train__steps=steps), *extra,
           "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(pid)]
    procs.append(subprocess.Popen(cmd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  return procs


def _wait(procs) -> None:
  outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]


def _sample_cli(workdir: str, out: str, processes: int, devices: int) -> None:
  port = _free_port()
  procs = []
  for pid in range(processes):
    dist = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
            "--process-id", str(pid)] if processes > 1 else []
    procs.append(subprocess.Popen(
        [PYTHON, "-m", "fm", "sample", "--workdir", workdir, "--solver", "euler", "--steps", "8",
         "--num", "64", "--out", out, *dist], env=_env(devices), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  _wait(procs)


def test_two_processes_share_the_workdir_lock(tmp_path):
  """One 2-process run holds the workdir lock once (process 0); another holder stops both processes
  with the same one sentence (no gloo DEADLINE). Default suite: keeps the scale-out path and the
  lock tested together."""
  import fcntl  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "shared")
  short = ["--config.eval.at_end=False", "--config.train.steps_per_call=2", "--config.train.log_every=2",
           "--config.train.checkpoint_every=4"]
  os.makedirs(workdir)
  with open(os.path.join(workdir, ".lock"), "w") as held:   # an unrelated fm train holds the workdir
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 4242 on elsewhere\n")
    held.flush()
    procs = _launch(workdir, _free_port(), 4, extra=short)
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
  lines = [[line for line in err.splitlines() if line.startswith("fm: ")] for err in errs]
  for p, err, ls in zip(procs, errs, lines):
    assert p.returncode == 2 and "Traceback" not in err and "DEADLINE" not in err, err[-2000:]
    assert len(ls) == 1 and "is in use by another fm train (pid 4242 on elsewhere)" in ls[0], err[-2000:]
  assert lines[0] == lines[1]
  assert sorted(os.listdir(workdir)) == [".lock"]

  procs = _launch(workdir, _free_port(), 4, extra=short)
  _wait(procs)
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  assert checkpoint.latest_step(workdir) == 4
  with open(os.path.join(workdir, ".lock")) as f:
    assert f.read().startswith(f"pid {procs[0].pid} on ")   # process 0 held it, alone
  assert [r["event"] for r in _read_history(workdir)] == ["start"]


def _read_history(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, otcfm_runs):
  """2 processes x 2 devices == 1 process x 4 devices; only process 0 writes results."""
  _, four = otcfm_runs
  workdir = str(tmp_path / "mp")
  _wait(_launch(workdir, _free_port(), 40))
  _assert_same_run(os.path.join(four, "global"), workdir)
  assert len(_metrics(workdir)) == 2  # one writer: no duplicated metric lines
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
  _sample_cli(workdir, str(tmp_path / "mp.npz"), processes=2, devices=2)
  _sample_cli(workdir, str(tmp_path / "sp.npz"), processes=1, devices=1)
  np.testing.assert_allclose(_samples(str(tmp_path), "mp.npz")[0], _samples(str(tmp_path), "sp.npz")[0],
                             atol=1e-6, rtol=0)


def _wait_for_checkpoint(workdir: str, procs, at_least: int) -> None:
  ckpts = os.path.join(workdir, "checkpoints")
  t0 = time.time()
  while not (os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= at_least for d in os.listdir(ckpts))):
    assert all(p.poll() is None for p in procs) and time.time() - t0 < TIMEOUT, procs[0].stderr.read()
    time.sleep(0.2)


@pytest.mark.slow
def test_two_processes_killed_and_restarted(tmp_path):
  """2 processes: SIGTERM to one stops both at the same step with a checkpoint; SIGKILL one (then the
  other) mid-run; restarting both each time ends the run equal to an uninterrupted one."""
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "killed")
  steps = 200
  no_eval = ["--config.eval.at_end=False"]

  procs = _launch(workdir, _free_port(), steps, extra=no_eval)
  _wait_for_checkpoint(workdir, procs, 20)
  procs[1].send_signal(signal.SIGTERM)  # only one process is told; both must stop together
  outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, [o[1][-2000:] for o in outs]
  stopped_at = checkpoint.latest_step(workdir)
  assert 20 <= stopped_at < steps

  procs = _launch(workdir, _free_port(), steps, extra=no_eval)
  _wait_for_checkpoint(workdir, procs, stopped_at + 20)
  procs[1].send_signal(signal.SIGKILL)
  time.sleep(2)
  procs[0].send_signal(signal.SIGKILL)  # left waiting in a collective for its dead peer
  for p in procs:
    p.communicate(timeout=60)
  assert checkpoint.latest_step(workdir) < steps

  _wait(_launch(workdir, _free_port(), steps, extra=no_eval))
  reference = str(tmp_path / "reference")
  _worker(4, _train(reference, method="otcfm", train__steps=steps, eval__at_end="False"))
  _assert_same_run(reference, workdir)


@pytest.mark.slow
def test_config_error_reported_by_every_process(tmp_path):
  workdir = str(tmp_path / "bad")
  procs = _launch(workdir, _free_port(), 40, extra=["--config.coupling.scope=everywhere"])
  outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2 and "everywhere" in err and "Traceback" not in err, err[-2000:]
  assert not os.path.exists(workdir)
