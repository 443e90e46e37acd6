#!/usr/bin/env bash
# Rebuild the calibrated dit-fmnist schedules used by benchmarks/eval_quality.py (minutes on 2 CPU cores):
# change curves at the evaluation's sampler/steps/guidance (DDIM, 20 steps, guidance 1.5), four block-cache
# schedules solved for a target speedup, closed-form scale/shift for the three faster ones, trained scale/shift
# for 1.55x and 1.8x, and Δ-DiT (N=2, Nc=8) with its boundary picked from the curves. Calibration seeds (100+)
# differ from the evaluation's sample seeds. Run from anywhere: bash schedules/fmnist-calibrated/make.sh
set -euo pipefail
cd "$(dirname "$0")"
DITCACHE="${DITCACHE:-ditcache}"
common=(--model dit-fmnist --steps 20 --scheduler ddim --guidance 1.5)
fit=(--model dit-fmnist --scheduler ddim --guidance 1.5)  # steps come from the schedule

$DITCACHE calibrate "${common[@]}" --seeds 100 101 102 103 104 --out curves.json --plot curves.png --quiet
for target in 1.3 1.55 1.8 2.2; do  # 2.2x: to meet MagCache / FirstBlockCache 0.2 (peers-fmnist.yaml)
  $DITCACHE auto-schedule --curves curves.json --target-speedup "$target" --out "blockcache-${target}x.yaml"
done
for target in 1.55 1.8 2.2; do
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --out "scale-shift-${target}x-closed-form.safetensors" --schedule-out "blockcache-${target}x-closed-form.yaml"
done
for target in 1.55 1.8; do
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --method trained --init closed-form --epochs 40 \
    --out "scale-shift-${target}x-trained.safetensors" --schedule-out "blockcache-${target}x-trained.yaml"
done
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
