"""`make demo-images` in its smoke mode: both runs train, sample and the figure is written (slow: UNet compile)."""
import os

import pytest

from train.helpers import ROOT

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.tar.gz")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHARED), reason="../shared/data/cifar10-jpeg.tar.gz is not beside the clone")
def test_demo_images_smoke(tmp_path, monkeypatch):
  import importlib.util
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "cache"))
  spec = importlib.util.spec_from_file_location("demo_images", os.path.join(ROOT, "experiments", "images", "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  workdir = str(tmp_path / "demo")
  assert demo.main(["--workdir", workdir, "--smoke", "--data-path", SHARED]) == 0
  for name in ("results.md", "figure.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  assert "| icfm |" in table and "| otcfm |" in table and "cifar10-jpeg" in table   # data source named
