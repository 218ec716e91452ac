#!/usr/bin/env bash
# Tong et al. (TMLR 2024) 2D protocol on a reduced budget, see README.md.
#
#   bash experiments/toy2d/run.sh            # whole study: pilot, two lanes in parallel, summary
#   bash experiments/toy2d/run.sh pilot      # SB-CFM sigma pilot only
#   bash experiments/toy2d/run.sh main_all   # icfm / otcfm / rf / fm, all tasks, seeds 0-4
#   bash experiments/toy2d/run.sh sb_default # sbcfm sigma = 1.0, all tasks, seeds 0-4
#   bash experiments/toy2d/run.sh sb_tuned "0 1 2"   # sbcfm sigma = $SB_SIGMA, all tasks, given seeds
#   bash experiments/toy2d/run.sh summary    # final sweeps (all runs finished -> aggregate only) + results.md/figure.png
#
# Every `fm sweep` skips runs whose eval.json is at train.steps, so any part can be
# re-run after an interruption. The lanes loop over seeds outermost and call
# `fm sweep` with one seed at a time (same run names as the final sweeps in
# `summary`, which then only aggregate), so an interrupted study has complete method
# coverage for the first seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."

FM=${FM:-.venv/bin/fm}
ROOT=${ROOT:-runs/toy2d}
STEPS=${STEPS:-1000}         # uniform training budget (paper: 20000), see README
PILOT_STEPS=${PILOT_STEPS:-400}
SB_SIGMA=${SB_SIGMA:-0.5}    # second SB-CFM sigma, picked by the pilot
PILOT_TASK="8gaussians->moons"
TASKS=("gaussian->8gaussians" "gaussian->moons" "8gaussians->moons" "gaussian->scurve")
SEEDS=(0 1 2 3 4)
# ema_decay 0.99 (default 0.999 would leave ~37% of the initial weights in the EMA after
# 1000 steps); checkpoint_every independent of train.steps, so a finished study can be
# extended with a larger STEPS (only train.steps may change on resume; constant LR).
OPTS=(--config configs/toy2d.py --config.train.ema_decay=0.99
      --config.train.log_every=200 --config.train.checkpoint_every=200)
COMMON=("${OPTS[@]}" "--config.train.steps=$STEPS")

slug() { echo "${1//->/-}"; }

methods_for() {  # fm (Lipman et al.) needs a Gaussian source
  if [[ $1 == gaussian-\>* ]]; then echo icfm,otcfm,rf,fm; else echo icfm,otcfm,rf; fi
}

main_sweep() {  # task seeds
  "$FM" sweep "${COMMON[@]}" --workdir "$ROOT/$(slug "$1")/main" "--config.data.task=$1" \
      --grid "method=$(methods_for "$1")" --grid "seed=$2"
}

sb_sweep() {  # task sigmas seeds
  "$FM" sweep "${COMMON[@]}" --workdir "$ROOT/$(slug "$1")/sbcfm" "--config.data.task=$1" \
      --config.method=sbcfm --grid "sigma=$2" --grid "seed=$3"
}

pilot() {  # SB-CFM sigma pilot: one task, seed 0, PILOT_STEPS steps, own workdir
  "$FM" sweep "${OPTS[@]}" "--config.train.steps=$PILOT_STEPS" --workdir "$ROOT/pilot" \
      "--config.data.task=$PILOT_TASK" --config.method=sbcfm --grid sigma=0.1,0.3,0.5,1.0 --grid seed=0
}

main_all() {  # icfm / otcfm / rf / fm
  for s in "${SEEDS[@]}"; do for t in "${TASKS[@]}"; do main_sweep "$t" "$s"; done; done
}

sb_default() {  # sbcfm, sigma = 1.0 (TorchCFM runner default)
  for s in "${SEEDS[@]}"; do for t in "${TASKS[@]}"; do sb_sweep "$t" 1.0 "$s"; done; done
}

sb_tuned() {  # sbcfm, sigma = SB_SIGMA, for the seeds in $1 (e.g. "0 1 2")
  for s in $1; do for t in "${TASKS[@]}"; do sb_sweep "$t" "$SB_SIGMA" "$s"; done; done
}

summary() {
  local all; all=$(IFS=,; echo "${SEEDS[*]}")
  for t in "${TASKS[@]}"; do main_sweep "$t" "$all"; sb_sweep "$t" "1.0,$SB_SIGMA" "$all"; done
  .venv/bin/python experiments/toy2d/summarize.py --root "$ROOT" --sb-sigma "$SB_SIGMA" \
      --pilot "$ROOT/pilot"
}

case "${1:-all}" in
  pilot|main_all|sb_default|summary) "$1" ;;
  sb_tuned) sb_tuned "${2:-0 1 2 3 4}" ;;
  all)  # two lanes of similar length (small-epsilon Sinkhorn is the slowest part)
    mkdir -p "$ROOT"
    (main_all && sb_tuned "3 4") > "$ROOT/lane_a.log" 2>&1 &
    a=$!
    (pilot && sb_default && sb_tuned "0 1 2") > "$ROOT/lane_b.log" 2>&1
    wait "$a"
    summary ;;
  *) echo "usage: $0 [all|pilot|main_all|sb_default|sb_tuned 'SEEDS'|summary]" >&2; exit 2 ;;
esac
