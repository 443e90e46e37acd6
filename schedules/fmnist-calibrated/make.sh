#!/usr/bin/env bash
# Rebuild the calibrated dit-fmnist schedules used by benchmarks/eval_quality.py (minutes on 2 CPU cores):
# change curves at the evaluation's sampler/steps/guidance (DDIM, 20 steps, guidance 1.5), five block-cache
# schedules solved for a target speedup, closed-form scale/shift for the four faster ones, trained scale/shift
# for 1.55x and 1.8x, and Δ-DiT (N=2, Nc=8) with its boundary picked from the curves. Calibration seeds (100+)
# differ from the evaluation's sample seeds. For benchmarks/configs/peers-fmnist.yaml also: error-driven schedules
# (auto-schedule --objective error, docs/error-driven.md: a greedy search per budget, the longest part, tens of
# minutes) and adaptive first-block schedules with their rescale polynomial (docs/adaptive.md).
# Run from anywhere: bash schedules/fmnist-calibrated/make.sh
set -euo pipefail
cd "$(dirname "$0")"
DITCACHE="${DITCACHE:-ditcache}"
common=(--model dit-fmnist --steps 20 --scheduler ddim --guidance 1.5)
fit=(--model dit-fmnist --scheduler ddim --guidance 1.5)  # steps come from the schedule

$DITCACHE calibrate "${common[@]}" --seeds 100 101 102 103 104 --out curves.json --plot curves.png --quiet
for target in 1.3 1.55 1.8 2.0 2.2; do  # 2.2x: to meet MagCache / FirstBlockCache 0.2 (peers-fmnist.yaml)
  $DITCACHE auto-schedule --curves curves.json --target-speedup "$target" --out "blockcache-${target}x.yaml"
done
for target in 1.55 1.8 2.0 2.2; do
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --out "scale-shift-${target}x-closed-form.safetensors" --schedule-out "blockcache-${target}x-closed-form.yaml"
done
for target in 1.55 1.8; do
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --method trained --init closed-form --epochs 40 \
    --out "scale-shift-${target}x-trained.safetensors" --schedule-out "blockcache-${target}x-trained.yaml"
done
# peers-fmnist.yaml's error-driven rows: 8 calibration images (seeds 100..107, class i % 10)
error_seeds=(--seeds 100 101 102 103 104 105 106 107)
$DITCACHE auto-schedule --objective error "${common[@]}" "${error_seeds[@]}" --target-speedup 1.5 \
  --out error-1.5x.yaml --quiet
$DITCACHE auto-schedule --objective error "${common[@]}" "${error_seeds[@]}" --target-speedup 2.0 \
  --out error-2x.yaml --quiet
# and the 2x one with closed-form scale/shift, as the block-cache schedules (eval_quality.py's error-2x-cf)
$DITCACHE fit-correction "${fit[@]}" --schedule error-2x.yaml --seeds 100 101 --quiet \
  --out scale-shift-error-2x-closed-form.safetensors --schedule-out error-2x-closed-form.yaml
# peers-fmnist.yaml's adaptive rows: probe/output curves and rescale polynomial on classes 0..9 x seeds 100, 101,
# threshold solved on the same runs for the MAC budget
$DITCACHE calibrate "${common[@]}" --adaptive first-block --seeds 100 101 --out adaptive-first-block.json --quiet
$DITCACHE auto-schedule --kind adaptive --calibration adaptive-first-block.json --target-speedup 1.5 \
  --out adaptive-first-block-1.5x.yaml
$DITCACHE auto-schedule --kind adaptive --calibration adaptive-first-block.json --target-speedup 2.0 \
  --out adaptive-first-block-2x.yaml
cat > delta-auto-N2-Nc8.yaml <<'YAML'
# Δ-DiT on dit-fmnist with the paper's N=2, Nc=8 but the outline/detail boundary b picked from curves.json
# (compare schedules/fmnist-delta-20.yaml: the paper's fixed b = steps / 2 = 10).
kind: delta-dit
steps: 20
boundary: auto
curves: curves.json
interval: 2
cached_blocks: 8
YAML
$DITCACHE show-plan --model dit-fmnist --schedule delta-auto-N2-Nc8.yaml | head -3
