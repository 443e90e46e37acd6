#!/usr/bin/env bash
# Rebuild the calibrated unet-fmnist schedules used by `benchmarks/eval_quality.py --model unet-fmnist`, the same
# way schedules/fmnist-calibrated/make.sh does for dit-fmnist (same commands, same code path): change curves of the
# 6 attention layers at the evaluation's sampler/steps/guidance (DDIM, 20 steps, guidance 1.5), block-cache
# schedules solved for target speedups (MACs), closed-form and trained scale/shift for the two faster ones.
# The attention layers are only 12% of this small U-Net's MACs (resnets at 28x28 dominate), so no schedule
# can exceed 1.14x; the targets are 1.05x, 1.08x and 1.11x. Calibration seeds (100+) differ from the evaluation's
# sample seeds. Run from anywhere: bash schedules/unet-fmnist-calibrated/make.sh (a few minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")"
DITCACHE="${DITCACHE:-ditcache}"
common=(--model unet-fmnist --steps 20 --scheduler ddim --guidance 1.5)
fit=(--model unet-fmnist --scheduler ddim --guidance 1.5)  # steps come from the schedule

$DITCACHE calibrate "${common[@]}" --seeds 100 101 102 103 104 --out curves.json --plot curves.png --quiet
for target in 1.05 1.08 1.11; do
  $DITCACHE auto-schedule --curves curves.json --target-speedup "$target" --out "blockcache-${target}x.yaml"
done
for target in 1.08 1.11; do
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --out "scale-shift-${target}x-closed-form.safetensors" --schedule-out "blockcache-${target}x-closed-form.yaml"
  $DITCACHE fit-correction "${fit[@]}" --schedule "blockcache-${target}x.yaml" --seeds 100 101 --quiet \
    --method trained --init closed-form --epochs 40 \
    --out "scale-shift-${target}x-trained.safetensors" --schedule-out "blockcache-${target}x-trained.yaml"
done
# attention layers beside the resnets (the paper's observation), same calibrate() with the resnets hooked too
python ../../benchmarks/unet_curves.py --model unet-fmnist --steps 20 --scheduler ddim --guidance 1.5 \
  --seeds 100 101 102 103 104 --out ../../benchmarks/results/unet_fmnist_curves
