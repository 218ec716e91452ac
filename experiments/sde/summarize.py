"""Markdown tables from experiments/sde/results.json: writes experiments/sde/results_sde.md and results_meanflow.md.

  .venv/bin/python experiments/sde/summarize.py experiments/sde/results.json
"""
import json
import os
import sys


def table(rows, header=("method", "sampler", "NFE", "W2")):
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    out.append(f"| {r['method']} | {r['sampler']} | {r['nfe']} | {r['w2']:.3f} |")
  return "\n".join(out)


def main(path):
  res = json.load(open(path))
  here = os.path.dirname(os.path.abspath(path))
  budget = (f"8gaussians→moons, MLP 3×64 SELU, AdamW 1e-3, batch {res['batch']}, {res['steps']} steps, "
            f"EMA 0.999, seed 0; exact W2 between 1000 samples and 1000 held-out targets (two target draws: ~0.3).")
  if "sb" in res:
    lines = [f"Budget: {budget} σ = 1 for both methods (entropic OT, ε = 2σ²).", "", table(res["sb"])]
    if "score" in res:
      lines += ["", "Score head against the analytic SB score (N(0, I) → N(μ, Σ), same budget): relative RMS error "
                "‖s_θ·2/σ² − ∇log p_t‖ / ‖∇log p_t‖ over 4000 points x ~ p_t.", "",
                "| t | " + " | ".join(f"{r['t']:g}" for r in res["score"]) + " |",
                "|---|" + "---|" * len(res["score"]),
                "| rel. error | " + " | ".join(f"{r['relative_rms_error']:.3f}" for r in res["score"]) + " |"]
    open(os.path.join(here, "results_sde.md"), "w").write("\n".join(lines) + "\n")
  if "meanflow" in res:
    lines = [f"Budget: {budget} 2-rectified flow trains twice as long ({res['steps']} steps of 1-RF, then "
             f"{res['steps']} on 10 000 dopri5 teacher pairs).", "", table(res["meanflow"])]
    extra = res.get("meanflow_extra") or (json.load(open(path.replace(".json", "_extra.json"))).get("meanflow_extra")
                                          if os.path.isfile(path.replace(".json", "_extra.json")) else None)
    if extra:
      lines += ["", "MeanFlow variants (CIFAR time sampler): plain L2 (p = 0) at the same budget, and p = 0.75 "
                "with 4x the steps:", "", table(extra)]
    open(os.path.join(here, "results_meanflow.md"), "w").write("\n".join(lines) + "\n")
  times = {k: round(v) for k, v in res.items() if k.endswith("train_s")}
  print("training seconds (shared 2-core machine under load):", times)


if __name__ == "__main__":
  main(sys.argv[1])
