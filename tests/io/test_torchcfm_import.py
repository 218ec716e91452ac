"""`fm import-torchcfm` on a checkpoint written by TorchCFM itself (tests/fixtures/torchcfm_ckpt_tiny.pt)."""
import os

import jax
import numpy as np
import pytest

from fm import cli
from fm import recipe
from train.helpers import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = ["--config.model.num_channels=32", "--config.model.num_res_blocks=1", "--config.model.channel_mult=(1,)",
        "--config.model.attention_resolutions=(8,)", "--config.model.num_heads=1",
        "--config.model.num_head_channels=-1", "--config.model.dropout=0.0"]


def _import(workdir, *extra):
  # The import reads no data; any existing data.path satisfies the config check (CI has ../shared, not all do).
  return cli.main(["import-torchcfm", os.path.join(FIXTURES, "torchcfm_ckpt_tiny.pt"), "--config",
                   os.path.join(ROOT, "configs", "cifar10.py"), "--workdir", workdir,
                   "--image-shape", "8,8,3", f"--config.data.path={FIXTURES}", *TINY, *extra])


def test_import_reproduces_torchcfm_and_samples(tmp_path, capsys):
  pytest.importorskip("fm.models.unet")
  workdir = str(tmp_path / "imported")
  assert _import(workdir) == 0
  assert "step 1234" in capsys.readouterr().out
  run, ema, step = recipe.load(workdir)
  assert step == 1234 and run.shape == (8, 8, 3)
  with np.load(os.path.join(FIXTURES, "torchcfm_ckpt_tiny.npz")) as f:
    v = jax.jit(run.model.apply)(ema, f["t"], f["x"])   # jitted: one compile, not op by op
    np.testing.assert_allclose(np.asarray(v), f["v"], rtol=1e-4, atol=1e-5)
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", workdir, "--solver", "euler", "--steps", "2", "--num", "5",
                   "--out", out]) == 0
  with np.load(out) as f:
    assert f["samples"].shape == (5, 8, 8, 3) and int(f["nfe_total"]) == 2


def test_import_refuses_bad_input(tmp_path, capsys):
  pytest.importorskip("fm.models.unet")
  occupied = tmp_path / "occupied"
  occupied.mkdir()
  (occupied / "keep.txt").write_text("x")
  assert _import(str(occupied)) == 2
  assert "not an empty directory" in capsys.readouterr().err
  assert _import(str(tmp_path / "w"), "--config.model.num_channels=64") == 2   # shapes do not fit
  assert "does not fit" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w" / "config.json")
  assert cli.main(["import-torchcfm", str(tmp_path / "missing.pt"), "--config",
                   os.path.join(ROOT, "configs", "cifar10.py"), "--workdir", str(tmp_path / "m")]) == 2


def test_interrupted_import_leaves_no_workdir(tmp_path, capsys, monkeypatch):
  """The import writes a temporary workdir and renames it: a failure mid-way (here a Ctrl-C while the
  checkpoint is saved) leaves neither the workdir nor the temporary; importing again then works."""
  pytest.importorskip("fm.models.unet")
  from fm.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "imported")
  real_save = checkpoint.Checkpointer.save

  def interrupted(self, step, state):
    real_save(self, step, state)
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint.Checkpointer, "save", interrupted)
  assert _import(workdir) == 130
  assert os.listdir(tmp_path) == []
  monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
  capsys.readouterr()
  assert _import(workdir) == 0 and sorted(os.listdir(tmp_path)) == ["imported"]
  assert recipe.load(workdir)[2] == 1234
