"""`fm eval` on 2 processes (jax.distributed over localhost, gloo): each record once, eval.json intact.

Both processes compute every metric (the samples are sharded over both); only
process 0 appends to eval.jsonl and writes files (`fm.io.files`). The numbers
equal those the end-of-training evaluation computed on one process (eval.json).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

from fm.evaluate import records
from train.helpers import PYTHON, subprocess_env, trained_run  # noqa: F401

METRICS = ("w2", "path_energy", "nll")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _eval(workdir: str, processes: int) -> None:
  """`fm eval` of METRICS at the run's eval settings on `processes` processes x 1 CPU device."""
  env = subprocess_env()
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  port, procs = _free_port(), []
  for pid in range(processes):
    dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
            "--process-id", str(pid)] if processes > 1 else []
    procs.append(subprocess.Popen(
        [PYTHON, "-m", "fm", "eval", "--workdir", workdir, "--metrics", ",".join(METRICS), *dist],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "results in" in outs[0][1]


def test_two_process_eval_writes_each_record_once(trained_run, tmp_path):  # noqa: F811
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir)
  with open(os.path.join(workdir, "eval.json"), "rb") as f:
    view = f.read()
  before = records.read(workdir)
  _eval(workdir, processes=2)
  two = records.read(workdir)[len(before):]
  assert [r["metric"] for r in two] == list(METRICS)   # once each: process 1 appended nothing
  with open(os.path.join(workdir, "eval.json"), "rb") as f:
    assert f.read() == view   # fm eval appends records; the end-of-training view is untouched
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(trained_run))   # no temporaries, no stray files
  end = json.loads(view)["records"]   # the same metrics at the same settings, on one process
  for rec in two[:2]:
    assert rec["nfe"] == end[rec["metric"]]["nfe"] and rec["num_samples"] == end[rec["metric"]]["num_samples"]
    assert rec["value"] == pytest.approx(end[rec["metric"]]["value"], rel=1e-5, abs=1e-6)
