#!/usr/bin/env bash
# The calibrated, corrected block-cache schedule through the compiled path on the shipped model:
# make.sh's blockcache-1.8x-closed-form.yaml (curves -> auto-schedule -> closed-form scale/shift)
# -> export-engines (ONNX Runtime, fp32) -> the compiled runner, compared with the eager runtime on the same
# schedule and with the full schedule. Log and numbers: benchmarks/results/fmnist_calibrated_compiled/.
# Run from anywhere: bash schedules/fmnist-calibrated/compiled_run.sh   (about 2 minutes on 2 CPU cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
results="$repo/benchmarks/results/fmnist_calibrated_compiled"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
DITCACHE="${DITCACHE:-ditcache}"
schedule="$here/blockcache-1.8x-closed-form.yaml"
common=(--guidance 1.5 --scheduler ddim --classes 0 1 2 3 4 5 6 7 8 9 --seed 7)
mkdir -p "$results"
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  set -x
  $DITCACHE export-engines --model dit-fmnist --schedule "$schedule" --backend onnxruntime --batch-size 10 --out "$work/engines"
  $DITCACHE run --engines "$work/engines" --schedule "$schedule" "${common[@]}" --repeats 3 --out "$work/compiled"
  $DITCACHE sample --model dit-fmnist --schedule "$schedule" "${common[@]}" --quiet --out "$work/eager"
  $DITCACHE sample --model dit-fmnist --steps 20 "${common[@]}" --quiet --out "$work/full"
  set +x
  python - "$work" <<'PY'
import sys
import numpy as np

work = sys.argv[1]
load = lambda name: np.load(f"{work}/{name}/latents.npy").astype(np.float64)
compiled, eager, full = load("compiled"), load("eager"), load("full")


def psnr(a, b):  # images in [-1, 1]: peak-to-peak 2
    mse = ((a - b) ** 2).mean(axis=tuple(range(1, a.ndim)))
    return float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-20))))


print(f"compiled (ONNX Runtime) vs eager, same schedule: max |diff| {np.abs(compiled - eager).max():.2e}, "
      f"PSNR {psnr(compiled, eager):.1f} dB")
print(f"cached (compiled) vs full schedule: PSNR {psnr(compiled, full):.2f} dB "
      f"(a cached run that equals the full one would say nothing: max |diff| {np.abs(compiled - full).max():.3f})")
PY
} 2>&1 | tee "$results/run.log"
