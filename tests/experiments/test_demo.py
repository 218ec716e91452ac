"""`make demo` end to end on the smoke budget: every method, reflow, table and figure."""
import csv
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_demo_smoke_writes_table_and_figure(tmp_path, monkeypatch, capsys):
  """Slow (~1 min: five 300-step runs and dopri5 evaluations). The default suite trains the same
  methods on the same `configs/toy2d.py:smoke` budget and checks they learn (tests/test_learning.py
  via the `smoke_runs` fixture) and 2-rectified flow (tests/train/test_loop.py::test_reflow);
  what only this test checks is the demo script's own table, figure and rerun."""
  demo = runpy.run_path(os.path.join(ROOT, "experiments", "toy2d", "demo.py"))
  workdir = str(tmp_path / "demo")
  assert demo["main"](["--workdir", workdir, "--smoke"]) == 0
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = {r["method"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"icfm", "rf", "otcfm", "sbcfm", "2-rf"}
  for name, r in rows.items():
    # Learned: W2(source, target) is 2.6 on 8gaussians->moons; the smoke budget reaches 0.5-0.9.
    assert 0 < float(r["w2"]) < 1.3, (name, r["w2"])
    assert (int(r["nfe"]) - 2) % 6 == 0   # dopri5's exact count: 1 + step-size probe + 6 per attempted step
  assert os.path.getsize(os.path.join(workdir, "figure.png")) > 10_000
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| 2-rf |" in table and "rtol = atol = 1e-05" in table
  # a second call finds every run finished and only rewrites the summary
  mtime = os.path.getmtime(os.path.join(workdir, "icfm", "eval.json"))
  assert demo["main"](["--workdir", workdir, "--smoke"]) == 0
  assert os.path.getmtime(os.path.join(workdir, "icfm", "eval.json")) == mtime
