"""Every results file says which code, JAX and device made it."""
import json
import os
import subprocess

import jax
import numpy as np

import fm
from fm import cli, provenance
from train.helpers import ROOT


def _expected():
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.join(ROOT, "fm"), capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  return {"fm_version": fm.__version__, "git_commit": commit, "jax_version": jax.__version__,
          "device_kind": jax.devices()[0].device_kind}


def test_record_names_version_commit_jax_and_device():
  record = provenance.record()
  assert {k: record[k] for k in _expected()} == _expected()
  assert record["backend"] == jax.default_backend() and record["device_count"] == jax.device_count()


def test_commit_is_unknown_outside_a_checkout(tmp_path):
  assert provenance.git_commit(str(tmp_path)) == ("unknown", None)


def test_results_files_carry_provenance(smoke_runs, tmp_path, capsys):   # smoke_runs: tests/conftest.py
  trained_run = smoke_runs["icfm"][2]
  expected = _expected()
  with open(os.path.join(trained_run, "provenance.json")) as f:
    assert {k: v for k, v in json.load(f).items() if k in expected} == expected
  with open(os.path.join(trained_run, "history.jsonl")) as f:
    assert all(json.loads(l)["provenance"]["git_commit"] == expected["git_commit"]
               for l in f if json.loads(l)["event"] in ("start", "resume"))
  with open(os.path.join(trained_run, "eval.json")) as f:
    assert {k: v for k, v in json.load(f)["provenance"].items() if k in expected} == expected
  out = str(tmp_path / "s.npz")
  assert cli.main(["sample", "--workdir", trained_run, "--num", "10", "--out", out]) == 0
  with np.load(out) as f:
    assert {k: str(f[f"provenance_{k}"]) for k in expected} == expected
  with open(os.path.join(trained_run, "config.json")) as f:
    assert "provenance" not in json.load(f)   # config comparisons on resume stay clean
