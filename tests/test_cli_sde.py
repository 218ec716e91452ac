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
