#!/usr/bin/env bash
# Tong et al. (TMLR 2024) 2D protocol on a reduced budget, see README.md.
#
#   bash experiments/toy2d/run.sh            # whole study: pilot, two lanes in parallel, summary
#   bash experiments/toy2d/run.sh pilot      # SB-CFM sigma pilot only
#   bash experiments/toy2d/run.sh lane_a     # icfm / otcfm / rf / fm, all tasks, seeds 0-4
#   bash experiments/toy2d/run.sh lane_b     # sbcfm (sigma = 1.0 and $SB_SIGMA), all tasks, seeds 0-4
#   bash experiments/toy2d/run.sh summary    # final sweeps (all runs finished -> aggregate only) + results.md/figure.png
#
# Every `fm sweep` skips runs whose eval.json is at train.steps, so any part can be
# re-run after an interruption. The lanes loop over seeds outermost and call
# `fm sweep` with one seed at a time (same run names as the final sweeps below), so
# an interrupted study has complete method coverage for the first seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."

FM=${FM:-.venv/bin/fm}
ROOT=${ROOT:-runs/toy2d}
STEPS=${STEPS:-400}          # uniform training budget (paper: 20000), see README
SB_SIGMA=${SB_SIGMA:-0.5}    # second SB-CFM sigma, picked by the pilot
PILOT_TASK="8gaussians->moons"
TASKS=("gaussian->8gaussians" "gaussian->moons" "8gaussians->moons" "gaussian->scurve")
SEEDS=(0 1 2 3 4)
COMMON=(--config configs/toy2d.py "--config.train.steps=$STEPS" --config.train.ema_decay=0.98
        --config.train.log_every=200 --config.train.checkpoint_every="$STEPS")

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

pilot() {  # SB-CFM sigma pilot on one task / seed (its sigma=1.0 and SB_SIGMA runs are reused by lane_b)
  sb_sweep "$PILOT_TASK" 0.1,0.3,0.5,1.0 0
  cp "$ROOT/$(slug "$PILOT_TASK")/sbcfm/table.md" "$ROOT/pilot_table.md"
}

lane_a() {
  for s in "${SEEDS[@]}"; do for t in "${TASKS[@]}"; do main_sweep "$t" "$s"; done; done
}

lane_b() {
  for s in "${SEEDS[@]}"; do for t in "${TASKS[@]}"; do sb_sweep "$t" "1.0,$SB_SIGMA" "$s"; done; done
}

summary() {
  local all; all=$(IFS=,; echo "${SEEDS[*]}")
  for t in "${TASKS[@]}"; do main_sweep "$t" "$all"; sb_sweep "$t" "1.0,$SB_SIGMA" "$all"; done
  .venv/bin/python experiments/toy2d/summarize.py --root "$ROOT" --sb-sigma "$SB_SIGMA" \
      --pilot "$ROOT/pilot_table.md"
}

case "${1:-all}" in
  pilot|lane_a|lane_b|summary) "$1" ;;
  all)
    lane_a > "$ROOT.lane_a.log" 2>&1 &
    a=$!
    pilot && lane_b
    wait "$a"
    summary ;;
  *) echo "usage: $0 [all|pilot|lane_a|lane_b|summary]" >&2; exit 2 ;;
esac
