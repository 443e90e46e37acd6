#!/usr/bin/env bash
# Interleaved A/B (one process, ABBA order) of compiled schedules on the shipped dit-fmnist: the full schedule,
# Δ-DiT N2 Nc8 and the calibrated block caches at 1.8x and 2.2x (with and without closed-form scale/shift), each
# exported with the inductor backend at segment granularity (what peers-fmnist.yaml's compile phase uses; three
# also at variant granularity), timed on the peers' batch (10 classes, guidance 1.5: model batch 20). Per-variant
# step times show where a compiled schedule's time goes. Results: benchmarks/results/ab_compiled_fmnist/.
# Run from anywhere: bash schedules/fmnist-calibrated/ab_compiled.sh   (minutes on 2 CPU cores: mostly compiling)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${WORK:-$(mktemp -d)}"
DITCACHE="${DITCACHE:-ditcache}"
printf 'kind: full\nsteps: 20\n' > "$work/full-20.yaml"
# name : schedule : granularity (segment = the block stack cut at the plan's range boundaries, one graph per
# range; variant = one graph per step variant)
candidates=(
  "full:$work/full-20.yaml:segment"
  "full-variant:$work/full-20.yaml:variant"
  "delta-N2-Nc8:$repo/schedules/fmnist-delta-20.yaml:segment"
  "blockcache-1.8x:$here/blockcache-1.8x.yaml:segment"
  "blockcache-1.8x-variant:$here/blockcache-1.8x.yaml:variant"
  "blockcache-1.8x-cf:$here/blockcache-1.8x-closed-form.yaml:segment"
  "blockcache-2.2x:$here/blockcache-2.2x.yaml:segment"
  "blockcache-2.2x-cf:$here/blockcache-2.2x-closed-form.yaml:segment"
  "blockcache-2.2x-cf-variant:$here/blockcache-2.2x-closed-form.yaml:variant"
)
names=()
engines=()
for candidate in "${candidates[@]}"; do
  IFS=: read -r name schedule granularity <<< "$candidate"
  out="$work/$name"
  [ -f "$out/manifest.json" ] || $DITCACHE export-engines --model dit-fmnist --schedule "$schedule" \
    --backend inductor --granularity "$granularity" --batch-size 10 --out "$out"
  names+=("$name")
  engines+=("$out")
done
python -m ditcache.benchmarks.ab_latency --engines "${engines[@]}" --labels "${names[@]}" \
  --classes 0 1 2 3 4 5 6 7 8 9 --guidance 1.5 --scheduler ddim --rounds 4 --threads 2 \
  --out "$repo/benchmarks/results/ab_compiled_fmnist"
