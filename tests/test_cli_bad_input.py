"""Bad input and damaged workdirs, as a new user meets them: one sentence on stderr, exit 2, nothing touched.

Each row of `CASES` builds its scene in a fresh directory (copies of one
finished run, a file, a damaged checkpoint, a held lock, ...), runs one `fm`
command in-process and checks the exit status, that stderr is one line naming
the problem, and that no file in the scene changed (the `.lock` file, which
records the pid of the last `fm train`, excepted).
"""
import json
import os
import shutil

import pytest

from fm import cli
from fm.train import checkpoint, workdir as workdir_lib
from train.helpers import CONFIG, cli_args, trained_run  # noqa: F401

SMOKE = CONFIG + ":smoke"
NOT_WRITABLE = "/proc/fm-test-not-writable"   # exists for nobody, not even root


def _files(path):
  """{relative path: (size, mtime_ns)} of every file under `path`, and the set of directories."""
  out = {}
  for root, dirs, files in os.walk(path):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), path)] = "dir"
    for name in files:
      if name == workdir_lib.LOCK_FILE:
        continue
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), path)] = (st.st_size, st.st_mtime_ns)
  return out


def _edit_config(workdir, **changes):
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with open(path, "w") as f:
    json.dump(config, f)


def _corrupt(workdir, step):
  """Truncates the data files of checkpoint `step` (a disk or copy gone wrong)."""
  for root, _, files in os.walk(os.path.join(checkpoint.checkpoint_dir(workdir), str(step))):
    if os.path.basename(root) == "d":
      for name in files:
        open(os.path.join(root, name), "w").close()


# Scenes: name -> function(scene dir, finished run) -> {placeholder: path}.
def _run(d, run):
  shutil.copytree(run, os.path.join(d, "run"))
  return {"RUN": os.path.join(d, "run")}


def _file(d, run):
  path = os.path.join(d, "file")
  with open(path, "w") as f:
    f.write("not a run\n")
  return {"FILE": path, **_run(d, run)}


def _cosine(d, run):
  out = _run(d, run)
  _edit_config(out["RUN"], train__schedule="cosine")
  return out


def _all_corrupt(d, run):
  out = _run(d, run)
  for step in checkpoint.all_steps(out["RUN"]):
    _corrupt(out["RUN"], step)
  return out


def _latest_corrupt(d, run):
  out = _run(d, run)
  _corrupt(out["RUN"], checkpoint.latest_step(out["RUN"]))
  return out


def _bad_config_json(d, run):
  out = _run(d, run)
  with open(os.path.join(out["RUN"], "config.json"), "a") as f:
    f.write("}{")
  return out


def _out_is_dir(d, run):
  out = _run(d, run)
  os.makedirs(os.path.join(out["RUN"], "out.npz"))
  return out


def _unfinished_teacher(d, run):
  out = _run(d, run)
  _edit_config(out["RUN"], method="rf", sigma=None, train__steps=80)   # as if killed at step 40 of 80
  return out


TRAIN = ["train", "--config", SMOKE, *cli_args()]
CASES = [
    # (id, scene, argv, expected in the message)
    ("lr-nan", _run, [*TRAIN, "--workdir", "NEW", "--config.train.lr=nan"], "train.lr"),
    ("lr-inf", _run, [*TRAIN, "--workdir", "NEW", "--config.train.lr=inf"], "train.lr"),
    ("lr-overflows-float32", _run, [*TRAIN, "--workdir", "NEW", "--config.train.lr=1e39"], "train.lr"),
    ("sbcfm-sigma-0", _run, [*TRAIN, "--workdir", "NEW", "--config.method=sbcfm", "--config.sigma=0"], "sigma=0"),
    ("train-workdir-empty", _run, [*TRAIN, "--workdir", ""], "must not be empty"),
    ("train-workdir-not-writable", _run, [*TRAIN, "--workdir", NOT_WRITABLE + "/run"], "not writable"),
    ("train-workdir-is-file", _file, [*TRAIN, "--workdir", "FILE"], "is a file"),
    ("train-workdir-under-file", _file, [*TRAIN, "--workdir", "FILE/run"], "is a file"),
    ("train-steps-below-checkpoint", _run, [*TRAIN, "--workdir", "RUN", "--config.train.steps=20"],
     "may not go below 40"),
    ("train-steps-raised-cosine", _cosine, [*TRAIN, "--workdir", "RUN", "--config.train.schedule=cosine",
                                            "--config.train.steps=80"], "schedule='cosine'"),
    ("train-fixed-setting-changed", _run, [*TRAIN, "--workdir", "RUN", "--config.model.width=32"],
     "model.width"),
    ("train-all-checkpoints-unreadable", _all_corrupt, [*TRAIN, "--workdir", "RUN"], "can be read"),
    ("train-config-json-damaged", _bad_config_json, [*TRAIN, "--workdir", "RUN"], "cannot be read"),
    ("reflow-teacher-not-rf", _run, [*TRAIN, "--workdir", "NEW", "--config.method=rf",
                                     "--config.reflow.teacher=RUN"], "not a rectified flow"),
    ("reflow-teacher-unfinished", _unfinished_teacher, [*TRAIN, "--workdir", "NEW", "--config.method=rf",
                                                        "--config.reflow.teacher=RUN"], "unfinished"),
    ("sample-rtol-0", _run, ["sample", "--workdir", "RUN", "--rtol", "0"], "rtol must be a finite number > 0"),
    ("sample-rtol-negative", _run, ["sample", "--workdir", "RUN", "--rtol", "-1"], "rtol"),
    ("sample-rtol-nan", _run, ["sample", "--workdir", "RUN", "--rtol", "nan"], "rtol"),
    ("sample-tolerances-0", _run, ["sample", "--workdir", "RUN", "--rtol", "0", "--atol", "0"], "rtol"),
    ("sample-atol-inf", _run, ["sample", "--workdir", "RUN", "--atol", "inf"], "atol"),
    ("sample-max-steps-0", _run, ["sample", "--workdir", "RUN", "--max-steps", "0"], "--max-steps"),
    ("sample-sde-no-steps", _run, ["sample", "--workdir", "RUN", "--solver", "euler_maruyama"], "pass --steps N"),
    ("sample-sde-noise-negative", _run, ["sample", "--workdir", "RUN", "--solver", "euler_maruyama", "--steps", "5",
                                         "--sde-noise", "-1"], "--sde-noise must be a finite number >= 0"),
    ("sample-sde-noise-with-ode", _run, ["sample", "--workdir", "RUN", "--sde-noise", "1"],
     "--sde-noise is for the SDE solvers"),
    ("sample-sde-coupled-run", _run, ["sample", "--workdir", "RUN", "--solver", "stochastic_heun", "--steps", "5"],
     "derives the score from the velocity, which needs x0 ~ N(0, I)"),
    ("sample-meanflow-on-a-flow", _run, ["sample", "--workdir", "RUN", "--solver", "meanflow", "--steps", "1"],
     "needs a MeanFlow run"),
    ("sample-workdir-empty", _run, ["sample", "--workdir", ""], "must not be empty"),
    ("sample-workdir-is-file", _file, ["sample", "--workdir", "FILE"], "is a file"),
    ("sample-out-dir-missing", _run, ["sample", "--workdir", "RUN", "--out", NOT_WRITABLE + "/s.npz"],
     "does not exist"),
    ("sample-out-not-writable", _run, ["sample", "--workdir", "RUN", "--out", "/proc/s.npz"], "not writable"),
    ("sample-out-is-dir", _out_is_dir, ["sample", "--workdir", "RUN", "--out", "RUN/out.npz"], "is a directory"),
    ("sample-num-huge", _run, ["sample", "--workdir", "RUN", "--num", "100000000000"], "GB of memory"),
    ("sample-no-such-step", _run, ["sample", "--workdir", "RUN", "--step", "7"], "no checkpoint at step 7"),
    ("sample-checkpoint-unreadable", _latest_corrupt, ["sample", "--workdir", "RUN"], "--step with one of"),
    ("eval-workdir-is-file", _file, ["eval", "--workdir", "FILE"], "is a file"),
    ("eval-workdir-empty", _run, ["eval", "--workdir", ""], "must not be empty"),
    ("eval-checkpoint-unreadable", _latest_corrupt, ["eval", "--workdir", "RUN"], "cannot be read"),
    ("sweep-workdir-is-file", _file, ["sweep", "--config", SMOKE, "--workdir", "FILE", "--grid", "seed=0"],
     "is a file"),
    ("sweep-grid-no-values", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "method=,"],
     "at least one value"),
    ("sweep-grid-key-twice", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "seed=0",
                                    "--grid", "seed=1"], "given twice"),
    ("sweep-grid-bad-value", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "method=icfm,nope"],
     "nope"),
]


@pytest.mark.parametrize("name,scene,argv,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, scene, argv, match, tmp_path, capsys, trained_run):  # noqa: F811
  del name
  paths = scene(str(tmp_path), trained_run)
  paths["NEW"] = str(tmp_path / "new")
  argv = [_fill(a, paths) for a in argv]
  before = _files(str(tmp_path))
  code = cli.main(argv)
  out, err = capsys.readouterr()
  assert code == 2, (out, err)
  assert err.startswith("fm: error: ") and err.count("\n") == 1, err
  assert match in err, err
  assert "Traceback" not in err
  assert _files(str(tmp_path)) == before
  assert not os.path.exists(paths["NEW"])


def _fill(arg, paths):
  for key, path in paths.items():
    arg = arg.replace(key, path)
  return arg


def test_table_size():
  """The count reported for issue 6 (besides the older cases in test_cli.py)."""
  assert len(CASES) == 41   # 36 for issue 6, 5 for the SDE and MeanFlow samplers (issue 15)


def test_second_train_in_a_workdir_is_locked_out(tmp_path, capsys, trained_run):  # noqa: F811
  paths = _run(str(tmp_path), trained_run)
  before = _files(str(tmp_path))
  with workdir_lib.lock(paths["RUN"]):   # another fm train holds the workdir
    code = cli.main([*TRAIN, "--workdir", paths["RUN"], "--config.train.steps=60"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "in use by another fm train" in err
  assert f"pid {os.getpid()}" in err
  assert _files(str(tmp_path)) == before


def test_ctrl_c_during_start_up_is_a_clean_exit_130(tmp_path, capsys, monkeypatch):
  from fm import config as config_lib

  def interrupted(spec):
    raise KeyboardInterrupt
  monkeypatch.setattr(config_lib, "load", interrupted)
  code = cli.main([*TRAIN, "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 130 and err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()
