"""Conditional runs end to end on a toy: the right mode is learnt, guidance sharpens it, and the
per-class metrics, label choices and grids equal independent computations."""
import json
import os
import subprocess

import jax
import numpy as np
import pytest
import scipy.optimize

from fm import config as config_lib, experiment, recipe
from fm.data import toys
from fm.evaluate import conditional, toy
from fm.evaluate import images as images_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "toy2d.py") + ":smoke"
TASK = "gaussian->8gaussians"


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
  """`configs/toy2d.py:smoke` (300 steps, batch 64) made conditional: 8 classes, label dropout 0.1."""
  workdir = str(tmp_path_factory.mktemp("cond") / "t8")
  config = config_lib.apply_overrides(config_lib.load(SMOKE), [
      ("data.task", TASK), ("model.num_classes", "8"), ("cond.drop_prob", "0.1"), ("method", "icfm")])
  result = experiment.train_and_evaluate(config, workdir)
  return workdir, result


def test_conditional_toy_learns_the_right_mode(cond_run):
  """Mode accuracy (fraction of class-k samples nearest mode k), 1000 dopri5 samples.

  Measured (seeds 0-2, experiments/conditional/toy_guidance.py): 0.835 +- 0.011 at
  guidance 1, 0.994 +- 0.004 at 2, 0.122 +- 0.007 at 0 (unconditional: chance is 1/8).
  """
  workdir, result = cond_run
  assert result["mode_accuracy"] > 0.7 and result["guidance"] == 1.0   # the end-of-training eval
  run, params, _ = recipe.load(workdir)
  acc = {s: toy.w2_at(run.model, params, TASK, 1000, guidance=s)["mode_accuracy"] for s in (0.0, 1.0, 2.0)}
  assert acc[1.0] > 0.7, acc
  assert acc[2.0] > 0.95 and acc[2.0] > acc[1.0], acc
  assert acc[0.0] < 0.3, acc   # guidance 0 ignores the label
  with open(os.path.join(workdir, "source.json")) as f:
    source = json.load(f)
  assert source["classes"] == list(toys.class_names("8gaussians")) and source["class_probs"] == [0.125] * 8


def test_sample_cli_by_class(cond_run, tmp_path):
  workdir, _ = cond_run
  out = str(tmp_path / "mode5.npz")
  res = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "fm"), "sample", "--workdir", workdir,
                        "--class", "5", "--class", "2", "--num", "200", "--guidance", "2", "--solver", "euler",
                        "--steps", "10", "--out", out], capture_output=True, text=True)
  assert res.returncode == 0, res.stderr
  assert "NFE 10 (euler, 20 network passes at guidance 2)" in res.stdout
  with np.load(out) as f:
    assert list(f["labels"]) == [5] * 100 + [2] * 100 and float(f["guidance"]) == 2.0
    assert int(f["nfe"]) == 10 and int(f["network_passes"]) == 20
    nearest = np.argmin(((f["samples"][:, None] - np.asarray(toys.mode_centres("8gaussians"))) ** 2).sum(-1), 1)
    assert (nearest == f["labels"]).mean() > 0.9
  assert os.path.isfile(str(tmp_path / "mode5.png"))


def test_sde_sampling_with_guidance(cond_run, tmp_path, capsys):
  """Euler-Maruyama (the marginal-preserving SDE of the icfm flow) takes guidance: at 2 the samples land on
  their class's mode far more often than at 0 (which ignores the label; measured 400 samples: 0.998 at 2, 0.098
  at 0); network passes are 2 NFE at 2."""
  from fm import cli
  workdir, _ = cond_run
  acc = {}
  for s in ("0", "2"):
    out = str(tmp_path / f"em{s}.npz")
    assert cli.main(["sample", "--workdir", workdir, "--solver", "euler_maruyama", "--steps", "20", "--classes",
                     "all", "--num", "400", "--guidance", s, "--out", out]) == 0
    assert f"NFE 20 (euler_maruyama, {20 if s == '0' else 40} network passes at guidance {s})" in capsys.readouterr().out
    with np.load(out) as f:
      assert int(f["nfe"]) == 20 and int(f["network_passes"]) == (20 if s == "0" else 40)
      assert float(f["guidance"]) == float(s) and float(f["sde_noise"]) == 1.0
      acc[s] = conditional.mode_accuracy(f["samples"], f["labels"], np.asarray(toys.mode_centres("8gaussians")))
  assert acc["2"]["value"] > 0.9 and acc["0"]["value"] < 0.3, acc


def test_class_labels_and_training_labels():
  np.testing.assert_array_equal(conditional.class_labels([3, 1], 6, 4), [3, 3, 3, 1, 1, 1])
  with pytest.raises(ValueError, match="valid classes: 0 to 3"):
    conditional.class_labels([4], 4, 4)
  with pytest.raises(ValueError, match="multiple of 3"):
    conditional.class_labels([0, 1, 2], 10, 4)
  probs = [0.1, 0.6, 0.3]
  y = conditional.training_labels(jax.random.PRNGKey(0), 30000, probs)
  freq = np.bincount(y, minlength=3) / len(y)
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(np.asarray(probs) * (1 - np.asarray(probs)) / len(y)))


def test_per_class_metrics_equal_brute_force():
  rng = np.random.default_rng(0)
  centres = np.asarray(toys.mode_centres("8gaussians"))
  labels = np.repeat(np.arange(3), 20)
  samples = centres[labels] + 0.1 * rng.normal(size=(60, 2))   # well inside their modes
  samples[:5] = centres[(labels[:5] + 1) % 8]   # five samples sit on the wrong mode
  acc = conditional.mode_accuracy(samples, labels, centres)
  assert acc["value"] == pytest.approx(55 / 60) and acc["per_class"][0] == pytest.approx(15 / 20)
  ref = centres[labels] + rng.normal(size=(60, 2))
  per_class = conditional.w2_per_class(samples, labels, ref, labels, 8)
  assert sorted(per_class) == [0, 1, 2]
  for k, value in per_class.items():   # equal sizes: W2 is the optimal assignment's root mean cost
    a, b = samples[labels == k], ref[labels == k]
    cost = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, c = scipy.optimize.linear_sum_assignment(cost)
    assert value == pytest.approx(np.sqrt(cost[r, c].mean()), rel=1e-4)


def test_class_grid_has_one_row_per_class(tmp_path):
  from PIL import Image
  images = np.zeros((12, 4, 4, 3), np.uint8)
  labels = np.repeat([2, 0, 1], 4)
  path = str(tmp_path / "g.png")
  images_lib.save_class_grid(path, images, labels, ["cat", "dog", "eel"], per_row=4, scale=1)
  with Image.open(path) as im:
    grid_w = 4 * (4 + 2) + 2
    assert im.height == 3 * (4 + 2) + 2 and im.width > grid_w   # 3 rows, a name column on the left


def test_eval_guidance_sweep_cli(cond_run, capsys):
  from fm import cli
  workdir, _ = cond_run
  assert cli.main(["eval", "--workdir", workdir, "--guidance-sweep", "1,2", "--num", "200", "--solver", "euler",
                   "--steps", "10"]) == 0
  assert "| guidance | W2 | mode accuracy | mean per-class W2 | NFE | network passes |" in capsys.readouterr().out
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    recs = [json.loads(line) for line in f if '"sweep": "guidance"' in line]
  assert [(r["guidance"], r["nfe"], r["network_passes"]) for r in recs] == [(1.0, 10, 10), (2.0, 10, 20)]
  assert recs[1]["mode_accuracy"] > recs[0]["mode_accuracy"]
  for ext in ("md", "csv", "png"):
    assert os.path.isfile(os.path.join(workdir, f"guidance_sweep.{ext}"))


def test_labels_follow_x1_through_the_coupling_into_the_model():
  """Method.loss hands the coupling the labels and the model `y = y1[i1]` (whatever pairing it returns)."""
  import jax.numpy as jnp
  from fm import methods
  seen = {}

  def coupling(key, x0, x1, y1=None):
    seen["coupling_y1"] = y1
    return jnp.array([1, 2, 0]), jnp.array([2, 0, 1]), {}

  def apply_fn(params, t, x, y=None):
    seen["y"] = y
    return jnp.zeros_like(x)
  method = methods.compose(coupling, methods.make_path("linear", 0.0), lambda k, n, dt: jnp.full((n,), 0.5, dt))
  x0, x1, y1 = jnp.zeros((3, 2)), jnp.ones((3, 2)), jnp.array([7, 8, 9])
  method.loss(apply_fn, None, jax.random.PRNGKey(0), x0, x1, y1)
  np.testing.assert_array_equal(seen["coupling_y1"], y1)
  np.testing.assert_array_equal(seen["y"], [9, 7, 8])
  method.loss(apply_fn, None, jax.random.PRNGKey(0), x0, x1)
  assert seen["y"] is None and seen["coupling_y1"] is None


def test_within_class_conditional_run_pairs_inside_classes(tmp_path):
  """The documented command's coupling, end to end: exact OT within classes trains a conditional toy."""
  config = config_lib.apply_overrides(config_lib.load(SMOKE), [
      ("data.task", TASK), ("model.num_classes", "8"), ("coupling.name", "exact"),
      ("coupling.condition", "within_class"), ("train.steps", "20"), ("train.steps_per_call", "20"),
      ("train.log_every", "20"), ("train.checkpoint_every", "20"), ("eval.at_end", "False")])
  # 20 steps: the pairing is what is checked, and OT shortens the pairs at every step, trained or not.
  experiment.train(config, str(tmp_path / "w"))
  with open(os.path.join(str(tmp_path / "w"), "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]["cost_after"] < rows[-1]["cost_before"]   # OT inside the classes still shortens the pairs
