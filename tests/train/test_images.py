"""Image runs end to end through the one trainer: folder -> device uint8 -> train -> grids -> sampling."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from fm import experiment
from fm import config as config_lib
from fm import recipe
from fm import evaluate
from train.helpers import ROOT, restore_state


def _image_folder(root, n=24, size=8):
  """Two classes of random-coloured squares as PNGs; returns the folder."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in ("a", "b"):
    os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(n // 2):
      img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(img).save(os.path.join(root, c, f"{i:03d}.png"))
  return root


def _config(folder, model=None, **overrides):
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  config.model = ml_collections.ConfigDict(model or {"name": "mlp", "width": 32, "depth": 2,
                                                     "activation": "selu"})
  base = {"data.path": folder, "data.image_size": "0", "train.steps": "20", "train.batch_size": "8",
          "train.steps_per_call": "10", "train.log_every": "10", "train.checkpoint_every": "10",
          "eval.every": "10", "eval.num_samples": "8", "eval.grid_steps": "2", "train.warmup_steps": "0"}
  base.update(overrides)
  config = config_lib.apply_overrides(config, list(base.items()))
  recipe.resolve(config)
  return config


@pytest.fixture
def folder(tmp_path, monkeypatch):
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "cache"))
  return _image_folder(str(tmp_path / "images"))


def test_image_run_end_to_end(folder, tmp_path):
  workdir = str(tmp_path / "run")
  result = experiment.train_and_evaluate(_config(folder), workdir)
  assert result["step"] == 20 and result["nfe"] > 0 and result["dopri5_success"]
  with open(os.path.join(workdir, "source.json")) as f:
    source = json.load(f)
  assert source["shape"] == [8, 8, 3] and source["kind"] == "images"
  assert "sha" in source["description"] or folder in source["description"]
  grids = sorted(os.listdir(os.path.join(workdir, "samples")))
  assert "grid_00000010.png" in grids and "grid_00000020.png" in grids
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == [10, 20]
  assert all(r["examples_per_sec"] == pytest.approx(8 * r["steps_per_sec"]) for r in rows)
  assert rows[-1]["lr"] == pytest.approx(1e-3)

  out = str(tmp_path / "s.npz")
  info = evaluate.sample_workdir(workdir, out, solver="euler", num=11, seed=3, steps=4, batch_size=4,
                                 png_dir=str(tmp_path / "pngs"), progress=False)
  with np.load(out) as f:
    assert f["samples"].shape == (11, 8, 8, 3) and f["samples"].dtype == np.uint8
    assert list(f["nfe_per_batch"]) == [4, 4, 4] and int(f["nfe_total"]) == 12 == info["nfe"]
    first = f["samples"]
  assert os.path.isfile(str(tmp_path / "s.png")) and len(os.listdir(tmp_path / "pngs")) == 11
  # The same seed gives the same images whatever the batch size (one noise key per sample).
  evaluate.sample_workdir(workdir, out, solver="euler", num=11, seed=3, steps=4, batch_size=16,
                          progress=False)
  with np.load(out) as f:
    np.testing.assert_array_equal(f["samples"], first)


def test_image_run_resumes_bitwise(folder, tmp_path):
  ref, parts = str(tmp_path / "ref"), str(tmp_path / "parts")
  experiment.train(_config(folder, **{"train.steps": "20"}), ref)
  experiment.train(_config(folder, **{"train.steps": "10"}), parts)
  experiment.train(_config(folder, **{"train.steps": "20"}), parts)
  a = restore_state(ref, _config(folder))
  b = restore_state(parts, _config(folder))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_conditional_image_run_end_to_end(folder, tmp_path):
  """Labels from the class folders through training, the per-class periodic grid, sampling by class and eval.

  Slow (~18 s): by default the same steps are covered piecewise: a conditional run trained, evaluated
  and sampled by class with guidance (tests/evaluate/test_conditional.py), an image run end to end
  (test_image_run_end_to_end), labels from class folders (tests/data/test_images.py::
  test_labelled_source_draws_labels_with_the_same_indices) and the per-class grid
  (test_class_grid_has_one_row_per_class)."""
  from PIL import Image
  from fm import cli
  workdir = str(tmp_path / "cond")
  config = _config(folder, **{"model.num_classes": "2", "cond.drop_prob": "0.5", "cond.guidance": "2.0"})
  result = experiment.train_and_evaluate(config, workdir)
  assert result["step"] == 20 and result["dopri5_success"] and result["guidance"] == 2.0
  assert result["network_passes"] == 2 * result["nfe_total"]
  with open(os.path.join(workdir, "source.json")) as f:
    source = json.load(f)
  assert source["classes"] == ["a", "b"] and source["class_probs"] == [0.5, 0.5]
  with Image.open(os.path.join(workdir, "samples", "grid_00000020.png")) as im:   # 2 rows of 32 (64 // 2)
    assert im.height == 2 * (2 * (8 + 2) + 2)
  out = str(tmp_path / "all.npz")
  assert cli.main(["sample", "--workdir", workdir, "--classes", "all", "--num", "6", "--solver", "euler",
                   "--steps", "3", "--out", out]) == 0
  with np.load(out) as f:
    assert list(f["labels"]) == [0, 0, 0, 1, 1, 1] and float(f["guidance"]) == 2.0
    assert int(f["nfe_total"]) == 3 and int(f["network_passes_total"]) == 6
    assert list(f["classes"]) == ["a", "b"]
  with np.load(os.path.join(workdir, result["samples"])) as f:   # end-of-training samples: training labels
    assert set(np.unique(f["labels"])) <= {0, 1} and float(f["guidance"]) == 2.0
def test_moved_data_resumes_and_damaged_images_are_recorded(folder, tmp_path):
  """data.path may change on resume when the data is the same (recorded in history.jsonl); source.json
  records the content sha, the one undecodable image skipped and the grayscale one converted."""
  from PIL import Image
  Image.fromarray(np.full((8, 8), 7, np.uint8), "L").save(os.path.join(folder, "a", "gray.png"))
  with open(os.path.join(folder, "b", "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n cut short")
  workdir = str(tmp_path / "run")
  experiment.train(_config(folder, **{"train.steps": "10"}), workdir)
  with open(os.path.join(workdir, "source.json")) as f:
    source = json.load(f)
  from fm.data import folder as folder_lib
  assert source["sha256"] == folder_lib.content_sha(folder)
  assert source["skipped"] == ["b/broken.png"] and source["converted"] == {"L": 1}
  assert source["num_images"] == 24 + 1
  moved = str(tmp_path / "moved")
  os.rename(folder, moved)
  experiment.train(_config(moved, **{"train.steps": "20"}), workdir)
  with open(os.path.join(workdir, "history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  assert history[-1]["event"] == "resume" and history[-1]["changes"]["data.path"] == [folder, moved]
  # the same path with other content is refused before anything is written
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(moved, "a", "new.png"))
  before = os.path.getmtime(os.path.join(workdir, "config.json"))
  with pytest.raises(config_lib.ConfigError, match="is not the data this run trained on"):
    experiment.train(_config(moved, **{"train.steps": "30"}), workdir)
  assert os.path.getmtime(os.path.join(workdir, "config.json")) == before


def test_model_checked_against_the_data_before_decoding_it(folder, tmp_path, monkeypatch):
  """A model that cannot take the images is refused after one image is decoded, not after all of them."""
  from fm.data import folder as folder_lib
  decoded = []
  real = folder_lib._decode
  monkeypatch.setattr(folder_lib, "_decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
  config = _config(folder, model={"name": "unet", "num_channels": 32, "channel_mult": (1, 2),
                                  "attention_resolutions": "64", "num_head_channels": -1})
  with pytest.raises(config_lib.ConfigError, match="attention_resolutions 64 names no level.* 8x8 are 8, 4"):
    experiment.train(config, str(tmp_path / "run"))
  assert not decoded and not os.path.exists(tmp_path / "run")
