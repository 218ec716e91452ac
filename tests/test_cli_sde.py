"""fm sample with SDE solvers and MeanFlow on the smoke runs of sf2m and meanflow (tests/conftest.py)."""
import os

import numpy as np
import pytest

from fm import cli


def _sample(workdir, tmp_path, *args):
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", workdir, "--num", "200", "--out", out, *args]) == 0
  return np.load(out)


def test_sf2m_sde_sampling(smoke_runs, tmp_path):
  """Euler-Maruyama on a trained sf2m run: NFE = steps, the noise is seeded, and noise 0 is the Euler ODE."""
  workdir = smoke_runs["sf2m"][2]
  a = _sample(workdir, tmp_path, "--solver", "euler_maruyama", "--steps", "20", "--sde-noise", "1.0")
  assert int(a["nfe"]) == 20 and float(a["sde_noise"]) == 1.0 and a["samples"].shape == (200, 2)
  b = _sample(workdir, tmp_path, "--solver", "euler_maruyama", "--steps", "20")      # default noise 1: same draw
  np.testing.assert_array_equal(a["samples"], b["samples"])
  c = _sample(workdir, tmp_path, "--solver", "euler_maruyama", "--steps", "20", "--seed", "1")
  assert not np.allclose(a["samples"], c["samples"])
  zero = _sample(workdir, tmp_path, "--solver", "euler_maruyama", "--steps", "20", "--sde-noise", "0")
  ode = _sample(workdir, tmp_path, "--solver", "euler", "--steps", "20")
  np.testing.assert_allclose(zero["samples"], ode["samples"], rtol=1e-5, atol=1e-5)
  assert int(_sample(workdir, tmp_path, "--solver", "stochastic_heun", "--steps", "10")["nfe"]) == 20


def test_meanflow_one_step(smoke_runs, tmp_path):
  """--solver meanflow --steps k: NFE = k; the run's eval used its instantaneous velocity with dopri5."""
  workdir = smoke_runs["meanflow"][2]
  one = _sample(workdir, tmp_path, "--solver", "meanflow", "--steps", "1")
  assert int(one["nfe"]) == 1 and np.isfinite(one["samples"]).all()
  assert int(_sample(workdir, tmp_path, "--solver", "meanflow", "--steps", "3")["nfe"]) == 3
  assert os.path.isfile(os.path.join(workdir, "eval.json"))


def test_eval_with_an_sde_and_meanflow(smoke_runs, capsys):
  """fm eval --solver euler_maruyama / meanflow: w2 records carry the sampler; ODE-only metrics are refused."""
  import json
  workdir = smoke_runs["sf2m"][2]
  assert cli.main(["eval", "--workdir", workdir, "--metrics", "w2", "--solver", "euler_maruyama", "--steps", "10",
                   "--sde-noise", "0.5"]) == 0
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    rec = [json.loads(l) for l in f][-1]
  assert rec["solver"] == "euler_maruyama" and rec["sde_noise"] == 0.5 and rec["nfe"] == 10 and rec["value"] > 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", workdir, "--metrics", "nll", "--solver", "euler_maruyama",
                   "--steps", "10"]) == 2
  assert "metric 'nll' needs an ODE solver" in capsys.readouterr().err
  workdir = smoke_runs["meanflow"][2]
  assert cli.main(["eval", "--workdir", workdir, "--metrics", "w2", "--solver", "meanflow", "--steps", "1"]) == 0
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    rec = [json.loads(l) for l in f][-1]
  assert rec["solver"] == "meanflow" and rec["nfe"] == 1


@pytest.mark.slow   # ~40 s: trains two tiny conditional runs
def test_conditional_meanflow_and_sf2m_sample_with_guidance(tmp_path, capsys):
  """Tiny conditional meanflow and sf2m runs (40 steps): fm sample --solver meanflow / euler_maruyama and an ODE
  solver take --class and --guidance 2 (the whole output guided, fm.heads.network), with exact NFE and passes."""
  from fm import experiment
  from train.helpers import tiny_config
  for method, solvers in (("meanflow", (("meanflow", 2, 2), ("euler", 3, 3))),
                          ("sf2m", (("euler_maruyama", 3, 3), ("stochastic_heun", 2, 4), ("euler", 3, 3)))):
    workdir = str(tmp_path / method)
    experiment.train(tiny_config(method=method, data__task="gaussian->8gaussians", model__num_classes=8,
                                 cond__drop_prob=0.1), workdir)
    for solver, steps, nfe in solvers:
      out = str(tmp_path / f"{method}_{solver}.npz")
      assert cli.main(["sample", "--workdir", workdir, "--solver", solver, "--steps", str(steps), "--class", "3",
                       "--num", "16", "--guidance", "2", "--out", out]) == 0, capsys.readouterr().err
      assert f"NFE {nfe} ({solver}, {2 * nfe} network passes at guidance 2)" in capsys.readouterr().out
      with np.load(out) as f:
        assert int(f["nfe"]) == nfe and int(f["network_passes"]) == 2 * nfe and list(f["labels"]) == [3] * 16
        assert np.isfinite(f["samples"]).all()


def _sweep_rows(workdir, name):
  import csv
  with open(os.path.join(workdir, name + ".csv")) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("method,spec,noise", [
    ("sf2m", "euler_maruyama:4,8", "0.5"), ("meanflow", "meanflow:1,2", None),
    pytest.param("sf2m", "stochastic_heun:2,4", None, marks=pytest.mark.slow),
    pytest.param("meanflow", "meanflow:1,3,4", None, marks=pytest.mark.slow)])
def test_nfe_sweep_with_sde_solvers_and_meanflow(smoke_runs, capsys, method, spec, noise):
  """fm eval --nfe-sweep over euler_maruyama (at --sde-noise), stochastic_heun and meanflow: each point records
  solver, steps, SDE noise, the NFE the solver itself counts, and (checked for the first) the W2 that a single
  fm eval at that setting gives."""
  import json
  import jax
  import jax.numpy as jnp
  from fm import solvers
  x, key = jnp.zeros((2, 2)), jax.random.PRNGKey(0)

  def own_nfe(solver, steps):   # the solver's own count on a dummy field
    if solver == "meanflow":
      return int(solvers.integrate_average(lambda t, x, h: x, x, steps=steps)[1]["nfe"])
    return int(solvers.integrate_sde(lambda t, x: x, 1.0, x, key, solver, steps=steps)[1]["nfe"])

  workdir = smoke_runs[method][2]
  solver, steps = spec.split(":")[0], [int(v) for v in spec.split(":")[1].split(",")]
  args = ["eval", "--workdir", workdir, "--nfe-sweep", spec, "--num", "64", *(["--sde-noise", noise] if noise else [])]
  assert cli.main(args) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  sde = solver in solvers.SDE_SOLVERS
  name = f"nfe_sweep_{solver}" + (f"_noise{float(noise or 1):g}" if sde else "")
  rows = _sweep_rows(workdir, name)
  assert [r["solver"] for r in rows] == [solver] * len(steps) and [int(r["steps"]) for r in rows] == steps
  assert [int(float(r["nfe"])) for r in rows] == [own_nfe(solver, s) for s in steps]
  assert all(float(r["w2"]) > 0 for r in rows)
  if sde:
    assert [float(r["sde_noise"]) for r in rows] == [float(noise or 1)] * len(steps)
    assert "| solver | steps | SDE noise | NFE | W2 |" in out and f"(SDE noise {float(noise or 1):g}) NFE sweep" in out
  else:
    assert "sde_noise" not in rows[0] and "| solver | steps | NFE | W2 |" in out
  assert os.path.getsize(os.path.join(workdir, name + ".png")) > 1000
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    swept = [json.loads(l) for l in f if f'"sweep": "{spec}"' in l]
  assert [(r["solver"], r["steps"], r["nfe"], r.get("sde_noise")) for r in swept[-len(steps):]] == [
      (solver, s, own_nfe(solver, s), float(noise or 1) if sde else None) for s in steps]
  if spec == "euler_maruyama:4,8":   # the last point is a single evaluation at that setting (same seed, samples)
    assert cli.main(["eval", "--workdir", workdir, "--metrics", "w2", "--num", "64", "--solver", solver, "--steps",
                     str(steps[-1]), "--sde-noise", noise]) == 0
    with open(os.path.join(workdir, "eval.jsonl")) as f:
      rec = [json.loads(l) for l in f][-1]
    assert rec["value"] == float(rows[-1]["w2"]) and rec["sde_noise"] == float(noise)
  capsys.readouterr()


def test_nfe_sweep_refuses_samplers_the_run_cannot_use(smoke_runs, capsys):
  """The sentences fm sample gives: meanflow needs a MeanFlow run, an SDE needs a score; nothing is written."""
  for method, spec, match in (("sf2m", "meanflow:1,2", "solver 'meanflow' needs a MeanFlow run"),
                              ("meanflow", "euler_maruyama:2", "needs a score, which a MeanFlow run has not"),
                              ("sbcfm", "stochastic_heun:2", "derives the score from the velocity")):
    workdir = smoke_runs[method][2]
    before = sorted(os.listdir(workdir))
    with open(os.path.join(workdir, "eval.jsonl")) as f:
      records = f.read()
    assert cli.main(["eval", "--workdir", workdir, "--nfe-sweep", spec, "--num", "16"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert sorted(os.listdir(workdir)) == before
    with open(os.path.join(workdir, "eval.jsonl")) as f:
      assert f.read() == records
