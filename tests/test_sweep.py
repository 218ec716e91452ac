"""`fm sweep` tables: whatever metrics the run kind has, mean ± std over seeds; image sweeps end to end."""
from __future__ import annotations

import csv
import json
import os

import ml_collections
import numpy as np
import pytest

from fm import config as config_lib
from fm import sweep
from fm.evaluate import fid
from train.helpers import ROOT


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_aggregate_images_and_toys(tmp_path):
  """Mean and sample std per column against numpy; a column only some seeds have; no toy columns for images."""
  image = [({"method": "icfm", "seed": "0"}, {"loss": 0.9, "nfe": 44.0, "fid": 120.0}),
           ({"method": "icfm", "seed": "1"}, {"loss": 0.7, "nfe": 50.0}),   # FID skipped on this one
           ({"method": "otcfm", "seed": "0"}, {"loss": 0.5, "nfe": 38.0, "fid": 90.0}),
           ({"method": "otcfm", "seed": "1"}, {"loss": 0.6, "nfe": 36.0, "fid": 80.0})]
  assert sweep.columns(image) == ["nfe", "fid", "loss"]
  rows = sweep.aggregate(image, ["method"])
  (p0, n0, s0), (p1, n1, s1) = rows
  assert p0 == {"method": "icfm"} and n0 == 2 and s0["fid"] == (120.0, 0.0)
  assert s0["loss"] == pytest.approx((0.8, np.std([0.9, 0.7], ddof=1)))
  assert s1["nfe"] == pytest.approx((37.0, np.std([38.0, 36.0], ddof=1)))
  paths = sweep.write_tables(str(tmp_path), rows, ["method"], failures=[("method=sbcfm", "TrainingError: NaN")])
  md = open(paths["md"]).read()
  assert "| method | n | NFE (dopri5) | FID | final loss |" in md and "W2" not in md
  assert "| otcfm | 2 | 37 ± 1.4 | 85 ± 7.1 | 0.55 ± 0.071 |" in md
  assert "- method=sbcfm: TrainingError: NaN" in md
  table = _read_csv(paths["csv"])
  assert float(table[1]["fid_mean"]) == 85.0 and float(table[0]["loss_std"]) == pytest.approx(0.141421, rel=1e-5)
  assert sorted(os.listdir(tmp_path)) == ["table.csv", "table.md"]   # no temporaries left

  toy = [({"seed": "0"}, {"w2": 0.5, "nfe": 80.0, "path_energy": 2.0, "normalized_path_energy": 0.1,
                          "w2_euler": 0.6, "cost_before": 8.0, "cost_after": 3.0, "loss": 1.0})]
  assert sweep.columns(toy) == ["w2", "nfe", "path_energy", "normalized_path_energy", "w2_euler", "loss",
                                "cost_before", "cost_after"]


def test_point_result_reads_eval_json_and_metrics_jsonl(tmp_path):
  """An old workdir's flat eval.json is read as is; loss is the last row, coupling costs the mean of all rows."""
  rows = [{"step": 10, "loss": 2.0, "cost_before": 8.0, "cost_after": 2.0},
          {"step": 20, "loss": 1.5, "cost_before": 6.0, "cost_after": 4.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')
  old_view = {"step": 20, "seed": 0, "w2": 0.4, "nfe": 62, "dopri5_success": True, "method": "otcfm",
              "path_energy": 3.0, "normalized_path_energy": 0.2, "w2_euler": 0.5, "provenance": {"x": 1}}
  got = sweep.point_result(str(tmp_path), old_view)
  assert {k: got[k] for k in ("w2", "nfe", "loss", "cost_before", "cost_after")} == {
      "w2": 0.4, "nfe": 62.0, "loss": 1.5, "cost_before": 7.0, "cost_after": 3.0}
  assert "step" not in got and "dopri5_success" not in got and "method" not in got


def _folder(root, n=12, size=8):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, count in (("train", n), ("test", 4)):
    d = os.path.join(root, split, "c")
    os.makedirs(d)
    for i in range(count):
      base = rng.integers(40, 216, (1, 1, 3))
      img = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"))
  return root


def _tiny_image_config(tmp_path, monkeypatch):
  """configs/cifar10.py:smoke with an MLP on a folder of 8x8 images and FID through a stand-in feature network."""
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "cache"))
  weights = tmp_path / "weights.pth"
  weights.write_bytes(os.urandom(100))
  monkeypatch.setattr(fid, "default_weights_path", lambda: weights)
  monkeypatch.setattr(fid, "load_inception", lambda path=None: {})
  monkeypatch.setattr(fid, "inception_features", lambda params, images, batch_size=50: np.concatenate(
      [np.asarray(images, np.float32).mean(axis=(1, 2)), np.asarray(images, np.float32).std(axis=(1, 2))], 1))
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  config.model = ml_collections.ConfigDict({"name": "mlp", "width": 16, "depth": 2, "activation": "selu"})
  return config_lib.apply_overrides(config, [
      ("data.path", _folder(str(tmp_path / "data"))), ("data.image_size", "0"), ("train.steps", "4"),
      ("train.batch_size", "4"), ("train.steps_per_call", "4"), ("train.log_every", "2"),
      ("train.checkpoint_every", "4"), ("train.warmup_steps", "0"), ("eval.every", "0"),
      ("eval.num_samples", "8"), ("eval.batch_size", "8"), ("eval.metrics", "grid,fid"), ("eval.fid_num", "8"),
      ("eval.rtol", "1e-2"), ("eval.atol", "1e-2")])


def _check_image_sweep(workdir, couplings, seeds):
  md = open(os.path.join(workdir, "table.md")).read()
  assert "| coupling.name | n | NFE (dopri5) | FID | final loss |" in md
  table = {r["coupling.name"]: r for r in _read_csv(os.path.join(workdir, "table.csv"))}
  assert list(table) == couplings
  for method in couplings:
    fids = []
    for seed in seeds:
      with open(os.path.join(workdir, f"coupling.name-{method}_seed-{seed}", "eval.json")) as f:
        view = json.load(f)
      assert view["records"]["fid"]["num_samples"] == 8 and view["samples"].startswith("samples/eval_")
      fids.append(view["fid"])
    assert float(table[method]["fid_mean"]) == pytest.approx(np.mean(fids), rel=1e-5)
    assert float(table[method]["fid_std"]) == pytest.approx(np.std(fids, ddof=1) if len(fids) > 1 else 0,
                                                            rel=1e-4, abs=1e-9)
  assert os.path.getsize(os.path.join(workdir, "figure.png")) > 1000


def test_image_sweep_tiny(tmp_path, monkeypatch):
  """The image path of `fm sweep` (the issue-16 crash) over two couplings: the table's FID is the points' eval.json's."""
  config = _tiny_image_config(tmp_path, monkeypatch)
  workdir = str(tmp_path / "sweep")
  rows, failures = sweep.run_sweep(config, workdir, {"coupling.name": ["independent", "exact"], "seed": ["0"]})
  assert not failures and len(rows) == 2
  _check_image_sweep(workdir, ["independent", "exact"], ["0"])


@pytest.mark.slow
def test_image_sweep_tiny_over_seeds(tmp_path, monkeypatch):
  """As above over two seeds: mean and sample std of each configuration's two points."""
  config = _tiny_image_config(tmp_path, monkeypatch)
  workdir = str(tmp_path / "sweep")
  _, failures = sweep.run_sweep(config, workdir, {"coupling.name": ["independent", "exact"], "seed": ["0", "1"]})
  assert not failures
  _check_image_sweep(workdir, ["independent", "exact"], ["0", "1"])


@pytest.mark.slow
def test_image_smoke_config_sweep_two_couplings(tmp_path, capsys):
  """`fm sweep --config configs/cifar10.py:smoke` over two couplings on the CIFAR-10 JPEG copy (few steps)."""
  from fm import cli
  # beside the checkout (../shared), or beside a worktree's parent (../../shared)
  candidates = [os.path.join(ROOT, *[".."] * up, "shared", "data", "cifar10-jpeg.tar.gz") for up in (1, 2)]
  path = next((p for p in candidates if os.path.exists(p)), None)
  if path is None:
    pytest.skip(f"no image data at {candidates[0]}")
  workdir = str(tmp_path / "sweep")
  code = cli.main(["sweep", "--config", os.path.join(ROOT, "configs", "cifar10.py") + ":smoke",
                   "--workdir", workdir, "--grid", "coupling.name=independent,exact",
                   f"--config.data.path={os.path.abspath(path)}",
                   "--config.data.limit=64", "--config.train.steps=4", "--config.train.batch_size=8",
                   "--config.train.steps_per_call=2", "--config.train.log_every=2",
                   "--config.train.checkpoint_every=4", "--config.eval.every=0", "--config.eval.num_samples=8",
                   "--config.eval.rtol=1e-2", "--config.eval.atol=1e-2"])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert "| coupling.name | n | NFE (dopri5) | final loss |" in out and "results in" in out
  rows = _read_csv(os.path.join(workdir, "table.csv"))
  assert [r["coupling.name"] for r in rows] == ["independent", "exact"] and all(float(r["nfe_mean"]) > 0 for r in rows)
  assert os.path.getsize(os.path.join(workdir, "figure.png")) > 1000
