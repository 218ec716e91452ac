"""The `fm` command: bad inputs exit 2 with one sentence, sampling, eval, sweep."""
import os
import subprocess

import numpy as np
import pytest

from fm import cli
from train.helpers import CONFIG, PYTHON, cli_args, snapshot, subprocess_env, trained_run  # noqa: F401

SMOKE = CONFIG + ":smoke"


def _main(capsys, argv):
  code = cli.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize("extra,match", [
    (["--config.train.stpes=10"], "train.steps"),
    (["--config.method=otfm"], "valid choices: icfm, rf, otcfm, sbcfm, fm, vp"),
    (["--config.data.task=gaussian->moon"], "moons"),
    (["--config.train.steps=ten"], "expected int"),
    (["--config.model.width=32"], "different config"),   # mismatch with the saved run
    (["--bogus"], "unrecognized argument"),
])
def test_train_bad_input_exits_2_and_leaves_workdir(capsys, trained_run, extra, match):  # noqa: F811
  before = snapshot(trained_run)
  code, _, err = _main(capsys, ["train", "--config", SMOKE, "--workdir", trained_run, *cli_args(), *extra])
  assert code == 2
  assert match in err and err.count("\n") == 1 and "Traceback" not in err
  assert snapshot(trained_run) == before


def test_bad_config_into_new_workdir_creates_nothing(capsys, tmp_path):
  workdir = tmp_path / "new"
  code, _, err = _main(capsys, ["train", "--config", SMOKE, "--workdir", str(workdir), "--config.method=nope"])
  assert code == 2 and "method" in err
  assert not workdir.exists()


@pytest.mark.parametrize("argv,match", [
    (["sample", "--workdir", "/nonexistent/run"], "does not exist"),
    (["eval", "--workdir", "/nonexistent/run"], "does not exist"),
    (["sample", "--workdir", "RUN", "--solver", "euler"], "--steps"),
    (["sample", "--workdir", "RUN", "--solver", "rk5"], "invalid choice"),
    (["sample", "--workdir", "RUN", "--num", "0"], "positive"),
    (["eval", "--workdir", "RUN", "--config.seed=1"], "unrecognized"),
])
def test_sample_eval_bad_input(capsys, trained_run, argv, match):  # noqa: F811
  before = snapshot(trained_run)
  argv = [trained_run if a == "RUN" else a for a in argv]
  code, _, err = _main(capsys, argv)
  assert code == 2 and match in err and err.count("\n") == 1
  assert snapshot(trained_run) == before


def test_eval_needs_a_run(capsys, tmp_path):
  code, _, err = _main(capsys, ["eval", "--workdir", str(tmp_path)])
  assert code == 2 and "config.json" in err


@pytest.mark.parametrize("solver,extra", [
    ("dopri5", ["--rtol", "1e-5", "--atol", "1e-5"]), ("euler", ["--steps", "10"]),
    ("midpoint", ["--steps", "5"]), ("heun", ["--steps", "5"]), ("rk4", ["--steps", "4"])])
def test_sample_each_solver(capsys, trained_run, tmp_path, solver, extra):  # noqa: F811
  out = str(tmp_path / f"{solver}.npz")
  code, stdout, _ = _main(capsys, ["sample", "--workdir", trained_run, "--solver", solver, "--num", "50",
                                   "--seed", "1", "--out", out, *extra])
  assert code == 0 and "NFE" in stdout
  with np.load(out) as f:
    assert f["samples"].shape == (50, 2) and np.isfinite(f["samples"]).all()
    assert int(f["nfe"]) > 0 and str(f["solver"]) == solver and int(f["seed"]) == 1
    if solver != "dopri5":
      assert int(f["nfe"]) == {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[solver] * int(f["steps"])
  assert os.path.exists(out[:-4] + ".png")


def test_eval_writes_json(capsys, trained_run):  # noqa: F811
  code, out, _ = _main(capsys, ["eval", "--workdir", trained_run])
  assert code == 0 and '"nfe"' in out and os.path.exists(os.path.join(trained_run, "eval.json"))


@pytest.mark.slow
def test_sweep(capsys, tmp_path):
  """Slow (4 training runs, ~30 s). By default, `fm sweep` end to end (training, table.md, figure.png)
  is test_sweep_point_failure_does_not_abort_the_sweep, its mean ± std is tests/test_sweep.py::
  test_aggregate_images_and_toys, two grid keys are test_image_sweep_tiny and the bad grid value is
  test_sweep_bad_grid_value_creates_nothing."""
  workdir = str(tmp_path / "sweep")
  code, out, err = _main(capsys, ["sweep", "--config", SMOKE, "--workdir", workdir, *cli_args(train__steps=20),
                                  "--grid", "method=icfm,otcfm", "--grid", "seed=0,1"])
  assert code == 0, err
  for name in ("table.md", "table.csv", "figure.png"):
    assert os.path.exists(os.path.join(workdir, name))
  with open(os.path.join(workdir, "table.md")) as f:
    table = f.read()
  assert "icfm" in table and "otcfm" in table and "±" in table
  assert len(os.listdir(workdir)) == 7   # 4 runs + 3 outputs


def test_sweep_bad_grid_value_creates_nothing(capsys, tmp_path):
  code, _, err = _main(capsys, ["sweep", "--config", SMOKE, "--workdir", str(tmp_path / "bad"),
                                "--grid", "method=icfm,nope"])
  assert code == 2 and "nope" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("sub", ["train", "sample", "eval", "sweep"])
def test_help(capsys, sub):
  with pytest.raises(SystemExit) as e:
    cli.main([sub, "--help"])
  assert e.value.code == 0 and "--workdir" in capsys.readouterr().out


def test_python_m_fm_exit_status(tmp_path):
  res = subprocess.run([PYTHON, "-m", "fm", "train", "--config", SMOKE, "--workdir", str(tmp_path / "w"),
                        "--config.train.stpes=1"], capture_output=True, text=True, env=subprocess_env())
  assert res.returncode == 2 and res.stderr.count("\n") == 1 and "train.steps" in res.stderr
  assert not (tmp_path / "w").exists()


def test_sample_cut_at_max_steps_is_recorded_and_said(capsys, trained_run, tmp_path):  # noqa: F811
  out = str(tmp_path / "cut.npz")
  code, _, err = _main(capsys, ["sample", "--workdir", trained_run, "--num", "20", "--out", out, "--max-steps", "2"])
  assert code == 0 and "not the flow's output" in err and "--max-steps 2" in err
  with np.load(out) as f:
    assert not bool(f["success"]) and int(f["max_steps"]) == 2
  code, _, err = _main(capsys, ["sample", "--workdir", trained_run, "--num", "20", "--out", out])
  assert code == 0 and "warning" not in err
  with np.load(out) as f:
    assert bool(f["success"])


def test_eval_marks_numbers_of_an_unfinished_solve(capsys, trained_run, tmp_path):  # noqa: F811
  import json
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["eval"].update(rtol=1e-13, atol=1e-13)   # below float32 resolution: dopri5 never reaches t = 1
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  code, out, err = _main(capsys, ["eval", "--workdir", workdir, "--metrics", "w2"])
  assert code == 0 and "warning: dopri5 stopped" in err
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    record = [json.loads(line) for line in f][-1]
  assert record["metric"] == "w2" and record["success"] is False


def test_sweep_point_failure_does_not_abort_the_sweep(capsys, caplog, tmp_path):
  import logging
  workdir = str(tmp_path / "sweep")
  with caplog.at_level(logging.INFO, logger="fm"):
    code, out, err = _main(capsys, ["sweep", "--config", SMOKE, "--workdir", workdir, *cli_args(train__steps=20),
                                    "--grid", "train.lr=1e30,0.001"])   # 1e30 diverges: a NaN stop
  assert code == 1 and "1 sweep point(s) failed (train.lr=1e30)" in err
  assert "sweep point 1/2: train.lr=1e30" in caplog.text and "sweep point 2/2: train.lr=0.001" in caplog.text
  with open(os.path.join(workdir, "table.md")) as f:
    table = f.read()
  assert "| 0.001 | 1 |" in table and "Failed points (1" in table and "TrainingError" in table
  assert os.path.exists(os.path.join(workdir, "figure.png"))


@pytest.mark.parametrize("argv", [
    ["--help"], ["sample", "--help"], ["sample", "--workdir", "/nonexistent"], ["eval", "--workdir", "/"],
    ["train", "--config", SMOKE, "--workdir", "/tmp/fm-never", "--config.train.lr=nan"],
    ["train", "--config", SMOKE, "--workdir", "/tmp/fm-never", "--config.train.stpes=1"],
    ["sweep", "--config", SMOKE, "--workdir", "/tmp/fm-never", "--grid", "method=,"],
])
def test_help_and_early_errors_do_not_import_jax(argv):
  """`fm --help` and errors in paths, flags and the trainer's numbers answer without importing JAX (~1.5 s)."""
  code = ("import sys\nfrom fm import cli\ntry:\n  cli.main(sys.argv[1:])\nexcept SystemExit:\n  pass\n"
          "print('JAX' if 'jax' in sys.modules else 'NO-JAX')")
  res = subprocess.run([PYTHON, "-c", code, *argv], capture_output=True, text=True, env=subprocess_env())
  assert res.stdout.strip().endswith("NO-JAX"), (res.stdout[-300:], res.stderr[-300:])
  assert not os.path.exists("/tmp/fm-never")


def test_jax_platforms_without_that_platform_is_one_sentence(tmp_path):
  """JAX_PLATFORMS=gpu on a machine without one: exit 2, one sentence naming the platforms there are."""
  env = subprocess_env()
  env["JAX_PLATFORMS"] = "gpu"
  res = subprocess.run([PYTHON, "-m", "fm", "train", "--config", SMOKE, "--workdir", str(tmp_path / "w"),
                        *cli_args()], env=env, capture_output=True, text=True, timeout=300)
  try:
    import jax_cuda12_plugin  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("this machine has the CUDA plugin")
  except ImportError:
    pass
  assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
  assert "JAX_PLATFORMS='gpu'" in res.stderr and "installed here are: cpu" in res.stderr
  assert not (tmp_path / "w").exists()


def test_train_says_where_results_went(tmp_path, capsys, trained_run):  # noqa: F811
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  code, out, _ = _main(capsys, ["train", "--config", SMOKE, *cli_args(), "--workdir", workdir])
  assert code == 0
  assert out.splitlines()[-1] == f"results in {workdir}: checkpoints/, metrics.jsonl, history.jsonl, eval.json"
