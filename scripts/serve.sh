#!/usr/bin/env bash
# Runs `maskserve serve` on the bundled model (models/shapes) at http://localhost:8080.
# Installs what it needs on a fresh machine: the ONNX Runtime library (PyPI wheel), cmake and
# nasm (for libjpeg-turbo) and the release build. Extra arguments go to `maskserve serve` (e.g. --port 9000, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH=$(scripts/ort-lib.sh)
export ORT_DYLIB_PATH
scripts/build-deps.sh
cargo build --release --locked --quiet
exec target/release/maskserve serve --model "${MASKSERVE_MODEL_DIR:-models/shapes}" "$@"
