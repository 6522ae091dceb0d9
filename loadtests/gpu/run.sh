#!/usr/bin/env bash
# The one-shot GPU check of issue 11 (see loadtests/gpu/README.md):
#   loadtests/gpu/run.sh [--smoke] RESULTS_DIR
# writes RESULTS_DIR/gpu.json, gpu.md, gpu.log (the phases' logs) and run.log (this run's), within 8 minutes on the device profile (under 3
# on the smoke profile: CPU, tiny model; also GPU_SMOKE=1). Every phase runs under its own timeout
# and a failed one is recorded, not fatal.
# Environment: MASKSERVE_BIN (default .gpu/maskserve if present, else target/release/maskserve),
# ORT_DYLIB_PATH (on the device: from `eval "$(bash .gpu/on-device.sh env)"`), GPU_WHEELS (wheels
# installed when pycocotools is missing; default .gpu/whl), GPU_WORK (scratch folder; default a new
# temporary one, removed at the end unless GPU_KEEP_WORK=1), GPU_BUDGET_S, PYTHON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
args=()
if [[ ${1:-} == --smoke ]]; then
  args+=(--smoke)
  shift
elif [[ ${GPU_SMOKE:-0} == 1 ]]; then
  args+=(--smoke)
fi
out=${1:?usage: loadtests/gpu/run.sh [--smoke] RESULTS_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}

if [[ -n ${GPU_WORK:-} ]]; then
  work=$GPU_WORK
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/maskserve-gpu.XXXXXX")
  if [[ ${GPU_KEEP_WORK:-0} != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
  fi
fi

bin=${MASKSERVE_BIN:-}
if [[ -z $bin ]]; then
  bin=$root/target/release/maskserve
  if [[ -f $root/.gpu/maskserve ]]; then
    bin=$root/.gpu/maskserve
    chmod +x "$bin" 2>/dev/null || true
  fi
fi

if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
  if [[ ${#args[@]} -gt 0 ]]; then
    ORT_DYLIB_PATH=$("$root/scripts/ort-lib.sh")
    export ORT_DYLIB_PATH
  else
    echo "run.sh: ORT_DYLIB_PATH is not set (eval \"\$(bash .gpu/on-device.sh env)\" first); maskserve will fail" >&2
  fi
fi

# maskexport (export, training data) and the output check need pycocotools, which the GPU machine lacks.
wheels=${GPU_WHEELS:-$root/.gpu/whl}
if ! "$py" -c 'import pycocotools' 2>/dev/null; then
  if compgen -G "$wheels/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$wheels"/*.whl
    export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "run.sh: pycocotools missing and no wheels in $wheels: export, output check and training will fail" >&2
  fi
fi

if [[ ${#args[@]} -gt 0 ]]; then budget=${GPU_BUDGET_S:-170}; else budget=${GPU_BUDGET_S:-440}; fi
limit=$((budget + 30))
cd "$root"
rc=0
timeout -k 10 "$limit" "$py" -m loadtests.gpu.main --out "$out" --work "$work" --maskserve-bin "$bin" \
  --budget-s "$budget" ${args[@]+"${args[@]}"} 2>&1 | tee "$out/run.log" || rc=${PIPESTATUS[0]}
if [[ $rc -ne 0 ]]; then
  "$py" -m loadtests.gpu.main --out "$out" --finalize "run.sh: the run ended with status $rc (124: its $limit s limit)" || true
fi
echo "run.sh: results in $out (gpu.json, gpu.md, gpu.log, run.log)"
exit "$rc"
