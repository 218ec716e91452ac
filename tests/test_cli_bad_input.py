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

import numpy as np

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


def _as_conditional(d, run):
  """A copy of the run whose config says 2 classes without label dropout (checked before any loading)."""
  out = _run(d, run)
  _edit_config(out["RUN"], model__num_classes=2, cond__drop_prob=0.0)
  return out


# --- image data and image models -----------------------------------------------------------------

CIFAR = os.path.join(os.path.dirname(CONFIG), "cifar10.py")


def _png(path, size=(16, 16), mode="RGB", seed=0):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)


def _images(d, run, sizes=((16, 16),) * 4):
  """IMGS: an image folder train/{cat,dog}/*.png (16x16 unless `sizes` says otherwise)."""
  del run
  root = os.path.join(d, "imgs")
  for i, size in enumerate(sizes):
    _png(os.path.join(root, "train", ("cat", "dog")[i % 2], f"{i}.png"), size, seed=i)
  return {"IMGS": root}


def _mixed_sizes(d, run):
  return _images(d, run, sizes=((16, 16), (16, 16), (16, 16), (8, 16)))


def _tarball(d, run):
  out = _images(d, run)
  import tarfile  # pylint: disable=g-import-not-at-top
  path = os.path.join(d, "imgs.tar.gz")
  with tarfile.open(path, "w:gz") as tf:
    tf.add(out["IMGS"], arcname="imgs")
  return {"TGZ": path}


def _cut_tarball(d, run):
  out = _tarball(d, run)
  with open(out["TGZ"], "rb") as f:
    data = f.read()
  with open(out["TGZ"], "wb") as f:
    f.write(data[:len(data) // 2])
  return out


def _junk_file(name, data):
  def scene(d, run):
    del run
    path = os.path.join(d, name)
    with open(path, "wb") as f:
      f.write(data)
    return {"JUNK": path}
  return scene


def _empty_folder(d, run):
  del run
  os.makedirs(os.path.join(d, "empty"))
  return {"IMGS": os.path.join(d, "empty")}


def _not_images(d, run):
  del run
  os.makedirs(os.path.join(d, "txt", "train"))
  with open(os.path.join(d, "txt", "train", "notes.txt"), "w") as f:
    f.write("not an image\n")
  return {"IMGS": os.path.join(d, "txt")}


def _undecodable(d, run):
  """Files named .png that are text: none can be decoded."""
  del run
  root = os.path.join(d, "bad")
  os.makedirs(os.path.join(root, "train"))
  for i in range(3):
    with open(os.path.join(root, "train", f"{i}.png"), "w") as f:
      f.write("not a png\n")
  return {"IMGS": root}


def _cache_is_file(d, run):
  out = _images(d, run)
  path = os.path.join(d, "cache-file")
  with open(path, "w") as f:
    f.write("a file, not a folder\n")
  return {**out, "$FM_CACHE": path}


def _changed_data(d, run):
  """RUN: an image run's workdir (config.json, source.json) whose data at IMGS has since changed."""
  from fm import config as config_lib  # pylint: disable=g-import-not-at-top
  out = _images(d, run)
  config = config_lib.apply_overrides(config_lib.load(CIFAR + ":smoke"), [("data.path", out["IMGS"])])
  os.makedirs(os.path.join(d, "run"))
  with open(os.path.join(d, "run", "config.json"), "w") as f:
    json.dump(config_lib.to_dict(config), f)
  with open(os.path.join(d, "run", "source.json"), "w") as f:
    json.dump({"name": "images", "shape": [16, 16, 3], "kind": "images", "description": "images",
               "sha256": "0" * 64}, f)
  return {**out, "RUN": os.path.join(d, "run")}


IMG = ["train", "--config", CIFAR + ":smoke", "--workdir", "NEW", "--config.train.steps=2"]
IMG_CASES = [
    ("images-tarball-random-bytes", _junk_file("x.tar.gz", os.urandom(3000)),
     [*IMG, "--config.data.path=JUNK"], "x.tar.gz' is not a complete, readable tarball"),
    ("images-tarball-is-text", _junk_file("x.tar", b"hello\n" * 200), [*IMG, "--config.data.path=JUNK"],
     "x.tar' is not a complete, readable tarball"),
    ("images-tarball-cut-short", _cut_tarball, [*IMG, "--config.data.path=TGZ"], "imgs.tar.gz' is not a complete, readable tarball"),
    ("images-not-a-tarball", _junk_file("x.zip", b"PK"), [*IMG, "--config.data.path=JUNK"],
     "neither a directory nor a tarball"),
    ("images-empty-folder", _empty_folder, [*IMG, "--config.data.path=IMGS"], "no .png/.jpg/.jpeg images found"),
    ("images-folder-of-text", _not_images, [*IMG, "--config.data.path=IMGS"], "no .png/.jpg/.jpeg images found"),
    ("images-none-decodable", _undecodable, [*IMG, "--config.data.path=IMGS"],
     "none of the 3 images in"),
    ("images-mixed-sizes", _mixed_sizes, [*IMG, "--config.data.path=IMGS"], "all images must have one size"),
    ("images-split-missing", _images, [*IMG, "--config.data.path=IMGS", "--config.data.split=validation"],
     "split 'validation' not found"),
    ("images-size-not-dividing", _images, [*IMG, "--config.data.path=IMGS", "--config.data.image_size=5"],
     "image_size=5 needs square images whose side it divides"),
    ("images-cache-is-a-file", _cache_is_file, [*IMG, "--config.data.path=IMGS"], "cache-file' is a file"),
    ("images-data-changed", _changed_data, [*IMG[:3], "--workdir", "RUN", "--config.train.steps=2",
                                            "--config.data.path=IMGS"], "is not the data this run trained on"),
    ("unet-channel-mult-empty", _images, [*IMG, "--config.data.path=IMGS", "--config.model.channel_mult=()"],
     "channel_mult=() has no level"),
    ("unet-head-channels-not-dividing", _images, [*IMG, "--config.data.path=IMGS",
                                                  "--config.model.num_head_channels=24"],
     "num_head_channels 24 does not divide the 64 channels"),
    ("unet-size-not-divisible", _images, [*IMG, "--config.data.path=IMGS", "--config.model.channel_mult=(1,1,1,1,1,1)"],
     "not divisible by 32 = 2^(6 levels - 1)"),
    ("unet-attention-no-level", _images, [*IMG, "--config.data.path=IMGS",
                                          "--config.model.attention_resolutions=(64,)"],
     "levels at 16x16 are 16, 8"),
    ("unet-float64", _images, [*IMG, "--config.data.path=IMGS", "--config.model.dtype=float64"],
     "'float64' is not supported"),
    ("dit-patch-not-dividing", _images, ["train", "--config", CIFAR + ":dit", "--workdir", "NEW",
                                         "--config.data.path=IMGS", "--config.model.patch_size=3"],
     "not divisible by the DiT patch size 3"),
    ("eval-grid-steps-0", _images, [*IMG, "--config.data.path=IMGS", "--config.eval.grid_steps=0"],
     "eval.grid_steps"),
]

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
    ("cond-target-without-labels", _run, [*TRAIN, "--workdir", "NEW", "--config.model.num_classes=2",
                                          "--config.data.task=gaussian->scurve"], "has no class labels"),
    ("cond-num-classes-wrong", _run, [*TRAIN, "--workdir", "NEW", "--config.model.num_classes=8"],
     "set model.num_classes=2"),
    ("cond-drop-prob-unconditional", _run, [*TRAIN, "--workdir", "NEW", "--config.cond.drop_prob=0.1"],
     "are for conditional runs"),
    ("cond-guidance-without-dropout", _run, [*TRAIN, "--workdir", "NEW", "--config.model.num_classes=2",
                                             "--config.cond.guidance=2"], "needs the null class trained"),
    ("sample-class-unconditional", _run, ["sample", "--workdir", "RUN", "--class", "1"],
     "is for class-conditional runs"),
    ("sample-guidance-unconditional", _run, ["sample", "--workdir", "RUN", "--guidance", "2"],
     "is for class-conditional runs"),
    ("sample-class-out-of-range", _as_conditional, ["sample", "--workdir", "RUN", "--class", "5"],
     "valid classes: 0 to 1"),
    ("sample-classes-not-all", _as_conditional, ["sample", "--workdir", "RUN", "--classes", "3"],
     "takes only 'all'"),
    ("sample-classes-num-not-shared", _as_conditional, ["sample", "--workdir", "RUN", "--classes", "all",
                                                        "--num", "3"], "multiple of 2"),
    ("sample-guidance-without-dropout", _as_conditional, ["sample", "--workdir", "RUN", "--guidance", "2"],
     "without label dropout"),
    ("eval-guidance-sweep-unconditional", _run, ["eval", "--workdir", "RUN", "--guidance-sweep", "1,2"],
     "is for class-conditional runs"),
    ("eval-guidance-sweep-bad-number", _as_conditional, ["eval", "--workdir", "RUN", "--guidance-sweep", "1,x"],
     "numbers separated by commas"),
    ("sweep-workdir-is-file", _file, ["sweep", "--config", SMOKE, "--workdir", "FILE", "--grid", "seed=0"],
     "is a file"),
    ("sweep-grid-no-values", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "method=,"],
     "at least one value"),
    ("sweep-grid-key-twice", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "seed=0",
                                    "--grid", "seed=1"], "given twice"),
    ("sweep-grid-bad-value", _run, ["sweep", "--config", SMOKE, "--workdir", "NEW", "--grid", "method=icfm,nope"],
     "nope"),
    ("eval-nfe-sweep-fraction", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "euler:1.5,2"],
     "'1.5' is not a positive whole number; euler takes whole step counts"),
    ("meanflow-time-sampler", _run, [*TRAIN, "--workdir", "NEW", "--config.method=meanflow",
                                     "--config.time.name=logit_normal"],
     "config key time.name='logit_normal' has no effect on loss 'meanflow', which draws its own (t, r) times "
     "(set them with loss.m, loss.s, loss.equal_fraction)"),
    ("eval-nfe-sweep-sde-coupled-run", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "euler_maruyama:2,4"],
     "derives the score from the velocity, which needs x0 ~ N(0, I)"),
    ("eval-nfe-sweep-meanflow-on-a-flow", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "meanflow:1,2"],
     "needs a MeanFlow run"),
    ("eval-nfe-sweep-sde-noise-with-ode", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "euler:1,2",
                                                 "--sde-noise", "1"], "--sde-noise is for the SDE solvers"),
    ("eval-nfe-sweep-sde-noise-negative", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "euler_maruyama:2",
                                                 "--sde-noise", "-1"], "--sde-noise must be a finite number >= 0"),
    ("eval-nfe-sweep-nll-with-sde", _run, ["eval", "--workdir", "RUN", "--nfe-sweep", "stochastic_heun:2",
                                           "--metrics", "nll"], "metric 'nll' needs an ODE solver"),
] + IMG_CASES


@pytest.fixture(autouse=True)
def _image_cache(tmp_path_factory, monkeypatch):
  """Image caches go outside the scene (the scene must stay untouched)."""
  monkeypatch.setenv("FM_CACHE", str(tmp_path_factory.getbasetemp() / "fm-cache"))


@pytest.mark.parametrize("name,scene,argv,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, scene, argv, match, tmp_path, capsys, monkeypatch, trained_run):  # noqa: F811
  del name
  paths = scene(str(tmp_path), trained_run)
  for key in [k for k in paths if k.startswith("$")]:
    monkeypatch.setenv(key[1:], paths.pop(key))
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
  """The count reported for issue 6 (36), issue 16 (+20), the SDE / MeanFlow samplers of issue 15 (+5),
  issue 14's class-conditional flags (+12) and issue 15's SDE / MeanFlow NFE sweeps and meanflow's times (+6)."""
  assert len(CASES) == 36 + 1 + len(IMG_CASES) + 5 + 12 + 6 == 79


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
