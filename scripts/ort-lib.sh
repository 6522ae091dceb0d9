#!/usr/bin/env bash
# Prints the path of libonnxruntime from the onnxruntime wheel (installs it if missing), so that
#   export ORT_DYLIB_PATH=$(scripts/ort-lib.sh)
set -euo pipefail
PY=${PYTHON:-python3}
VERSION=${ORT_VERSION:-1.31.1}
find_lib() {
  "$PY" - <<'PY' 2>/dev/null
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
print(libs[-1] if libs else "")
PY
}
lib=$(find_lib || true)
if [[ -z "$lib" ]]; then
  "$PY" -m pip install --quiet "onnxruntime==${VERSION}" >&2
  lib=$(find_lib)
fi
[[ -n "$lib" && -f "$lib" ]] || { echo "libonnxruntime not found in the onnxruntime wheel" >&2; exit 1; }
echo "$lib"
