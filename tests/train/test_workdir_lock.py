"""`fm.train.workdir.lock` and `check_free` in one process (several processes: tests/train/test_parallel.py)."""
import errno
import fcntl
import os
import socket

import pytest

from fm import config as config_lib
from fm.train import workdir as workdir_lib


def test_lock_names_holder_and_refuses_a_second(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with open(tmp_path / ".lock") as f:
      assert f.read() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    for probe in (workdir_lib.check_free, lambda w: workdir_lib.lock(w).__enter__()):
      with pytest.raises(config_lib.ConfigError, match=f"in use by another fm train \\(pid {os.getpid()} on "):
        probe(str(tmp_path))
  workdir_lib.check_free(str(tmp_path))   # released
  with workdir_lib.lock(str(tmp_path)):
    pass


def test_check_free_touches_nothing(tmp_path):
  workdir_lib.check_free(str(tmp_path / "absent"))
  workdir_lib.check_free(str(tmp_path))
  assert list(tmp_path.iterdir()) == []


def test_old_lock_file_holder(tmp_path):
  (tmp_path / ".lock").write_text("4242\n")   # written by an fm before hosts were named
  with open(tmp_path / ".lock") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(config_lib.ConfigError, match=r"\(pid 4242\)"):
      workdir_lib.check_free(str(tmp_path))


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_file_system_without_flock_warns_and_runs(tmp_path, monkeypatch, caplog, code):
  """Lustre mounted noflock, NFS without a lock manager: one warning, then the run goes on unlocked."""
  def no_flock(fd, op):
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(fcntl, "flock", no_flock)
  with caplog.at_level("WARNING", logger="fm"), workdir_lib.lock(str(tmp_path)):
    pass
  warnings = [r.getMessage() for r in caplog.records if "has no flock" in r.getMessage()]
  assert len(warnings) == 1 and "run one at a time" in warnings[0]


def test_other_lock_errors_are_one_sentence(tmp_path, monkeypatch):
  def broken(fd, op):
    raise OSError(errno.EIO, "Input/output error")
  monkeypatch.setattr(fcntl, "flock", broken)
  with pytest.raises(config_lib.ConfigError, match="cannot be locked \\(Input/output error\\)"):
    with workdir_lib.lock(str(tmp_path)):
      pass
