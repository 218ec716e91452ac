"""`fm eval` on toy runs: test NLL against closed forms and by hand, W2 records, the NFE sweep."""
from __future__ import annotations

import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm import cli, likelihood
from fm.data import toys
from fm.evaluate import records, runner, toy
from fm import recipe
from train.helpers import tiny_config, trained_run  # noqa: F401


def eight_gaussians_log_density(x):
  """Written out independently of fm.data.toys: (1/8) sum_k N(x; 5 (cos, sin)(k pi/4), sqrt(0.1) I)."""
  var = math.sqrt(0.1)
  terms = []
  for k in range(8):
    c = jnp.array([5 * math.cos(k * math.pi / 4), 5 * math.sin(k * math.pi / 4)])
    terms.append(-jnp.sum((x - c) ** 2, axis=1) / (2 * var) - math.log(2 * math.pi * var))
  return jax.scipy.special.logsumexp(jnp.stack(terms), axis=0) - math.log(8)


def test_nll_of_zero_velocity_is_the_source_density():
  """v = 0 (all-zero MLP parameters): the flow is the identity, so log p1 = log p0, in closed form."""
  from scipy import stats
  run = recipe.build(tiny_config(), (2,))
  params = jax.tree_util.tree_map(jnp.zeros_like, run.init_state().ema_params)
  got = toy.nll(run.model, params, "8gaussians->moons", num_samples=64, seed=3)
  y = np.asarray(toys.sample("moons", toy.eval_keys(3)[1], 64), np.float64)
  centres = [(5 * np.cos(k * np.pi / 4), 5 * np.sin(k * np.pi / 4)) for k in range(8)]
  dens = sum(stats.multivariate_normal(c, np.sqrt(0.1) * np.eye(2)).pdf(y) for c in centres) / 8
  assert got["value"] == pytest.approx(-np.mean(np.log(dens)), rel=1e-5)
  got = toy.nll(run.model, params, "gaussian->moons", num_samples=64, seed=3, solver="euler", steps=2)
  assert got["value"] == pytest.approx(np.mean(0.5 * np.sum(y ** 2, 1) + np.log(2 * np.pi)), rel=1e-5)
  assert got["nfe"] == 2 and got["divergence"] == "exact"


def test_eval_toy_run(trained_run, capsys):  # noqa: F811
  """NLL equals -mean log p1 by hand (fm.likelihood + the density above); W2 equals training's eval.json."""
  before = records.read(trained_run)
  code = cli.main(["eval", "--workdir", trained_run, "--metrics", "w2,nll"])
  out, err = capsys.readouterr()
  assert code == 0, err
  w2, nll = json.loads(out)
  with open(os.path.join(trained_run, "eval.json")) as f:
    end = json.load(f)
  assert w2["metric"] == "w2" and w2["value"] == pytest.approx(end["w2"], rel=1e-6) and w2["nfe"] == end["nfe"]
  run, params, _ = recipe.load(trained_run)
  ec = run.config.eval
  y = toys.sample("moons", toy.eval_keys(ec.seed)[1], ec.num_samples)
  logp, _ = likelihood.log_prob(recipe.velocity(run.model, params), y, rtol=ec.rtol, atol=ec.atol,
                                log_p0=eight_gaussians_log_density)
  assert nll["value"] == pytest.approx(-float(np.mean(np.asarray(logp, np.float64))), rel=1e-4)
  assert nll["divergence"] == "exact" and nll["source_density"] == "8gaussians" and nll["num_samples"] == 64
  assert nll["rtol"] == ec.rtol and nll["nfe"] > 0 and nll["seed"] == ec.seed and "fm_commit" in nll
  after = records.read(trained_run)
  assert after[:len(before)] == before and [r["metric"] for r in after[len(before):]] == ["w2", "nll"]


def test_nll_unavailable_for_sampled_sources():
  assert toy.nll_unavailable("8gaussians->moons") is None
  why = toy.nll_unavailable("moons->8gaussians")
  assert why.startswith("NLL skipped") and "'moons'" in why and why.count(". ") == 0
  with pytest.raises(ValueError, match="NLL skipped"):
    toy.nll(None, None, "moons->8gaussians")


def test_toy_nfe_sweep(trained_run, capsys):  # noqa: F811
  for spec, nfe in (("euler:1,2,4", [1, 2, 4]), ("midpoint:1,3", [2, 6])):
    code = cli.main(["eval", "--workdir", trained_run, "--nfe-sweep", spec, "--num", "32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    solver = spec.split(":")[0]
    with open(os.path.join(trained_run, f"nfe_sweep_{solver}.csv")) as f:
      rows = list(csv.DictReader(f))
    assert [float(r["nfe"]) for r in rows] == nfe and all(float(r["w2"]) > 0 for r in rows)
    assert os.path.getsize(os.path.join(trained_run, f"nfe_sweep_{solver}.png")) > 1000
    assert "| W2 |" in out
  # The sweep's W2 at Euler 4 is the W2 of `w2` at that setting.
  run, params, _ = recipe.load(trained_run)
  direct = toy.w2_at(run.model, params, run.config.data.task, 32, run.config.eval.seed, "euler", steps=4)
  rec = [r for r in records.read(trained_run) if r.get("sweep") == "euler:1,2,4"][-1]
  assert rec["value"] == pytest.approx(direct["value"], rel=1e-6) and rec["num_samples"] == 32


def test_toy_eval_rejects_image_metrics(trained_run, capsys):  # noqa: F811
  code = cli.main(["eval", "--workdir", trained_run, "--metrics", "fid"])
  assert code == 2 and "choose from: w2, path_energy, nll" in capsys.readouterr().err
  code = cli.main(["eval", "--workdir", trained_run, "--nfe-sweep", "euler:2", "--metrics", "path_energy"])
  assert code == 2 and "choose from: w2, nll" in capsys.readouterr().err
