#!/usr/bin/env bash
# The GPU check on a bare machine, from a copy of this repository (at most 8 minutes on one H100/H200):
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]     # e.g. --budget-s 420, --skip-timing
#   bash benchmarks/gpu_check.sh --dry-run                   # the CPU dry run (tiny model, no CUDA)
#   bash benchmarks/gpu_check.sh fetch-wheels                # on a machine WITH a package registry, beforehand
#
# It installs what it needs and can, says clearly what is missing, and runs what it can:
#   1. Python and torch must be there (nothing runs without them).
#   2. Wheels carried in .whl/ (see fetch-wheels) are installed offline first; then, only if a package registry
#      answers, pip installs what is still missing: diffusers, onnx, onnxscript; onnxruntime-gpu and tensorrt
#      (gigabytes) only with GPU_CHECK_HEAVY=1, since the download would eat the device time.
#   3. ditcache itself: pip install -e . (offline, no dependencies); failing that, a path shim.
#   4. python -m ditcache.benchmarks.gpu_check: each backend it cannot run is skipped with the reason.
# Results: benchmarks/results/gpu-check-<device>/; when $OUT is set (the device tool), the result files are also
# copied there flat (results.json, results.md, timing-b<N>.md/.json, gpu_check.log).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${DITCACHE_GPU_SITE:-/tmp/ditcache-gpu-site}
say() { echo "gpu_check.sh: $*" >&2; }

# pure-Python wheels the GPU image lacks (diffusers and its one missing dependency); versions as on the CPU machines
WHEELS=(diffusers==0.42.1 importlib_metadata)

if [ "${1:-}" = "fetch-wheels" ]; then
    mkdir -p .whl
    $PY -m pip download --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}" || { say "pip download failed"; exit 1; }
    say "wheels in .whl/: $(ls .whl | tr '\n' ' ')"
    say "carry .whl with the working tree (ignore it in git: echo /.whl/ >> .git/info/exclude)"
    exit 0
fi

if ! $PY -c "import torch" 2>/dev/null; then
    say "MISSING: torch ($PY cannot import it): nothing can run; install PyTorch with CUDA first"
    exit 2
fi
$PY -c "import torch; print('gpu_check.sh: torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE')" >&2

mkdir -p "$SITE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || say "WARNING: installing the carried wheels failed"
fi

have() { $PY -c "import $1" 2>/dev/null; }
registry() { timeout 15 $PY -m pip download --no-deps -q -d /tmp/ditcache-probe pip >/dev/null 2>&1; }
wanted=(diffusers onnx onnxscript)
[ "${GPU_CHECK_HEAVY:-0}" = 1 ] && wanted+=(onnxruntime tensorrt)
missing=()
for module in "${wanted[@]}"; do have "$module" || missing+=("$module"); done
if [ "${#missing[@]}" -gt 0 ]; then
    if registry; then
        for module in "${missing[@]}"; do
            # --no-deps: what the image already has (numpy, torch, ...) must not be shadowed by new copies in $SITE
            deps=--no-deps
            case $module in
                diffusers) pkgs=("${WHEELS[@]}") ;;
                onnxruntime) pkgs=(onnxruntime-gpu) ;;
                tensorrt) pkgs=(tensorrt); deps= ;;  # the meta package pulls its CUDA libraries
                *) pkgs=("$module") ;;
            esac
            say "pip install ${pkgs[*]} (registry reachable)"
            timeout 300 $PY -m pip install -q $deps --target "$SITE" "${pkgs[@]}" || say "could not install ${pkgs[*]}"
        done
    else
        say "no package registry reachable: not installing ${missing[*]}"
    fi
fi
if have onnxruntime && ! $PY -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())"; then
    say "MISSING: onnxruntime has no CUDAExecutionProvider (CPU wheel): its CUDA check will be skipped"
fi
for module in diffusers onnx onnxscript onnxruntime tensorrt; do
    have "$module" && continue
    case $module in
        diffusers) say "MISSING: diffusers: nothing can run (carry its wheel: bash benchmarks/gpu_check.sh fetch-wheels)" ;;
        *) say "MISSING: $module: the checks that need it are skipped (gpu_check.py says which)" ;;
    esac
done

if ! $PY -c "import ditcache.benchmarks.gpu_check" 2>/dev/null; then
    if ! $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1; then
        say "pip install -e . failed offline: using a path shim for ditcache"
        shim="$SITE/ditcache"
        rm -rf "$shim" && mkdir -p "$shim" && cp -r ditcache/. "$shim/"
        for part in graphs compiler export benchmarks; do ln -sfn "$PWD/$part" "$shim/$part"; done
        version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
        mkdir -p "$SITE/ditcache-$version.dist-info"
        printf 'Metadata-Version: 2.1\nName: ditcache\nVersion: %s\n' "$version" > "$SITE/ditcache-$version.dist-info/METADATA"
    fi
fi
$PY -c "import ditcache.benchmarks.gpu_check" || { say "MISSING: ditcache cannot be imported (see above)"; exit 2; }

export PYTHONUNBUFFERED=1
$PY -m ditcache.benchmarks.gpu_check "$@" 2>&1 | tee /tmp/gpu_check.log
code=$?
if [ -n "${OUT:-}" ]; then
    results=$(ls -td benchmarks/results/gpu-check-*/ 2>/dev/null | head -1)
    if [ -n "$results" ]; then
        cp "$results"/results.json "$results"/results.md "$OUT"/ 2>/dev/null
        for t in "$results"/timing-b*/; do
            [ -d "$t" ] || continue
            name=$(basename "$t")
            cp "$t/results.md" "$OUT/$name.md" 2>/dev/null
            cp "$t/results.json" "$OUT/$name.json" 2>/dev/null
        done
    fi
    cp /tmp/gpu_check.log "$OUT"/gpu_check.log
    say "copied the results to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit $code
