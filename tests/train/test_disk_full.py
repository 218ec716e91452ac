"""A full disk during training: one sentence naming the path and the space needed, exit 1, no
`.orbax-checkpoint-tmp` left, and the next run resumes.

The disk is a real, small tmpfs where this process may mount one (root, as in the
project's sandbox); elsewhere those tests skip and the in-process test that makes
orbax's save fail as tensorstore does (ENOSPC inside a ValueError) still runs.
"""
import contextlib
import errno
import os
import subprocess

import jax
import numpy as np
import pytest

from fm.io import disk
from fm.train import checkpoint
from train.helpers import CONFIG, PYTHON, subprocess_env, trained_run  # noqa: F401


@contextlib.contextmanager
def _tmpfs(path, size):
  os.makedirs(path)
  res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
  if res.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
  try:
    yield str(path)
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _leftovers(root):
  return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files
          if ".orbax-checkpoint-tmp" in n or n.endswith(".tmp")]


def test_is_full_reads_python_and_tensorstore_errors():
  assert disk.is_full(OSError(errno.ENOSPC, "No space left on device"))
  assert disk.is_full(ValueError("RESOURCE_EXHAUSTED: Failed to write 3760128 bytes to file 21: No space left on "
                                 "device [os_error_code='28']"))
  try:
    try:
      raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError as inner:
      raise RuntimeError("wrapped") from inner
  except RuntimeError as outer:
    assert disk.is_full(outer)
  assert not disk.is_full(OSError(errno.EACCES, "Permission denied"))
  assert not disk.is_full(ValueError("checkpoint 7 cannot be read"))


def _state(n):
  return {"w": np.arange(n, dtype=np.float32)}


def test_checkpoint_on_a_full_tmpfs(tmp_path):
  """A real ENOSPC from orbax/tensorstore: DiskFull naming the directory and the size; no temporaries;
  the earlier checkpoint stays readable."""
  with _tmpfs(tmp_path / "disk", "1m") as root:
    workdir = os.path.join(root, "run")
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(1, _state(10))
    with pytest.raises(disk.DiskFull) as info:
      ckpt.save(2, _state(1_000_000))   # 4 MB on a 1 MB disk
    ckpt.close()
    message = str(info.value)
    assert message.count("\n") == 0 and "checkpoints'" in message and "writing checkpoint 2" in message
    assert "needs about 4.0 MB" in message
    assert _leftovers(root) == [] and checkpoint.all_steps(workdir) == [1]
    restored = checkpoint.Checkpointer(workdir, read_only=True).restore(
        jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(10)))
    np.testing.assert_array_equal(restored["w"], _state(10)["w"])


def test_checkpoint_disk_full_without_a_tmpfs(tmp_path, monkeypatch):
  """The same path where no tmpfs can be mounted: orbax's save fails as tensorstore does after
  creating its temporary directory."""
  workdir = str(tmp_path / "run")
  ckpt = checkpoint.Checkpointer(workdir)

  def full(step, **kw):
    del kw
    os.makedirs(os.path.join(checkpoint.checkpoint_dir(workdir), f"{step}.orbax-checkpoint-tmp", "d"))
    raise ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device [os_error_code='28']")
  monkeypatch.setattr(ckpt._manager, "save", full)
  with pytest.raises(disk.DiskFull, match="writing checkpoint 3 .*needs about 40 B"):
    ckpt.save(3, _state(10))
  assert _leftovers(workdir) == []


@pytest.mark.slow
def test_fm_train_on_a_full_disk_then_resumes(tmp_path):
  """`fm train` with a checkpoint larger than the disk: exit 1, one `fm: error:` sentence, no traceback,
  no orbax temporaries; after space is freed (the tmpfs grown) the same command finishes."""
  with _tmpfs(tmp_path / "disk", "3m") as root:
    workdir = os.path.join(root, "run")
    cmd = [PYTHON, "-m", "fm", "train", "--config", CONFIG + ":smoke", "--workdir", workdir,
           "--config.model.width=512", "--config.train.steps=20", "--config.train.checkpoint_every=10",
           "--config.train.log_every=10", "--config.train.steps_per_call=10", "--config.eval.at_end=False"]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    errors = [line for line in res.stderr.splitlines() if line.startswith("fm: ")]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1 and "no space left on the disk of" in errors[0] and "checkpoint 10" in errors[0]
    assert len(res.stderr.splitlines()) <= 3, res.stderr   # a progress line or two, then the sentence
    assert _leftovers(root) == []
    subprocess.run(["mount", "-o", "remount,size=64m", root], check=True)
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert checkpoint.latest_step(workdir) == 20


def test_fm_sample_on_a_full_disk_leaves_no_temporaries(tmp_path, capsys, trained_run):  # noqa: F811
  """`fm sample` whose output does not fit: exit 1, one sentence naming the output's folder, and no
  `*.tmp*` file (nor the output) left on the disk."""
  from fm import cli  # pylint: disable=g-import-not-at-top
  with _tmpfs(tmp_path / "disk", "256k") as root:
    out = os.path.join(root, "s.npz")
    code = cli.main(["sample", "--workdir", trained_run, "--solver", "euler", "--steps", "2",
                     "--num", "200000", "--out", out])   # 1.6 MB of float32 points
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("fm: error: no space left on the disk of"), err
    assert root in err and "Traceback" not in err
    assert os.listdir(root) == []
