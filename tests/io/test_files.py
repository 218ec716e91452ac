"""fm.io.files: atomic writes that leave nothing behind on failure, process 0 only unless per-process."""
import errno
import json
import os
import sys

import numpy as np
import pytest

from fm.io import files


def _listing(d):
  return sorted(os.listdir(d))


def test_writes_round_trip(tmp_path):
  files.write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3)})
  assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "v": [0, 1, 2]}
  files.write_text(tmp_path / "t.md", "héllo\n")
  assert (tmp_path / "t.md").read_text(encoding="utf-8") == "héllo\n"
  files.write_npz(tmp_path / "s.npz", samples=np.ones((2, 3)), nfe=np.int32(7))
  with np.load(tmp_path / "s.npz") as f:
    np.testing.assert_array_equal(f["samples"], np.ones((2, 3)))
    assert int(f["nfe"]) == 7
  img = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
  files.write_png(tmp_path / "i.png", img)
  files.write_png(tmp_path / "g.png", img[..., :1])
  from PIL import Image
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "i.png")), img)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), img[..., 0])
  assert _listing(tmp_path) == ["a.json", "g.png", "i.png", "s.npz", "t.md"]   # no temporaries
  mode = os.stat(tmp_path / "a.json").st_mode & 0o777
  umask = os.umask(0)
  os.umask(umask)
  assert mode == 0o666 & ~umask   # as open(path, "w") would make it, not mkstemp's 0o600


def test_append_and_read_jsonl_skip_a_cut_line(tmp_path):
  path = tmp_path / "e.jsonl"
  files.append_jsonl(path, {"a": 1})
  with open(path, "a") as f:
    f.write('{"cut off')   # a kill mid-append
  files.append_jsonl(path, {"b": np.int64(2)})   # starts on the cut line: that line stays unparseable
  assert files.read_jsonl(path) == [{"a": 1}]
  files.append_jsonl(path, {"c": 3})
  assert files.read_jsonl(path)[-1] == {"c": 3}
  assert files.read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_leaves_target_and_no_temporary(tmp_path, monkeypatch, where):
  target = tmp_path / "eval.json"
  files.write_json(target, {"old": True})
  def enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
  if where == "write":   # the data do not fit: the temporary file's write fails
    real_fdopen = os.fdopen

    class Full:
      def __init__(self, f):
        self.f = f

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        self.f.close()

      def write(self, data):
        self.f.write(data[:3])
        enospc()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
  else:
    monkeypatch.setattr(os, where, enospc)
  with pytest.raises(OSError, match="No space"):
    files.write_json(target, {"new": True})
  monkeypatch.undo()
  assert json.loads(target.read_text()) == {"old": True}
  assert _listing(tmp_path) == ["eval.json"]


def test_failure_inside_atomic_block_removes_temporary(tmp_path):
  target = tmp_path / "x.npy"
  with pytest.raises(KeyboardInterrupt):
    with files.atomic(target) as f:
      f.write(b"partial")
      raise KeyboardInterrupt
  assert _listing(tmp_path) == []
  with pytest.raises(TypeError):
    files.write_json(target, {"bad": object()})   # serialised before any file is made
  assert _listing(tmp_path) == []


def test_only_process_zero_writes_unless_per_process(tmp_path, monkeypatch):
  jax = pytest.importorskip("jax")
  assert "jax" in sys.modules
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not files.is_writer()
  assert files.write_json(tmp_path / "shared.json", {}) is False
  assert files.append_jsonl(tmp_path / "shared.jsonl", {}) is False
  assert files.write_npz(tmp_path / "shared.npz", a=np.zeros(1)) is False
  assert files.write_png(tmp_path / "shared.png", np.zeros((2, 2), np.uint8)) is False
  with files.atomic(tmp_path / "sink.bin") as f:
    f.write(b"dropped")
  assert _listing(tmp_path) == []
  assert files.write_json(tmp_path / "mine.json", {"p": 1}, per_process=True) is True
  assert files.append_jsonl(tmp_path / "mine.jsonl", {"p": 1}, per_process=True) is True
  assert _listing(tmp_path) == ["mine.json", "mine.jsonl"]
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert files.write_json(tmp_path / "shared.json", {}) is True
