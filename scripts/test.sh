#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, parity, server over real HTTP), Python (model
# export parity against PyTorch, data, fixture, RLE through pycocotools, deploy manifests),
# lints, and the k6 smoke scenario. Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== installing Python dependencies"
"$PY" -m pip install --quiet --disable-pip-version-check -r model-export/requirements.txt \
  -r tests/deploy/requirements.txt -r loadtests/requirements.txt 2>&1 | grep -v "running pip as the 'root' user" || true
ORT_DYLIB_PATH=$(scripts/ort-lib.sh)
export ORT_DYLIB_PATH

echo "== lints"
cargo fmt --all -- --check
cargo clippy --locked --all-targets --quiet -- -D warnings
(cd model-export && "$PY" -m ruff check . && "$PY" -m ruff format --check .)
lint_dirs=(tests scripts)
[[ -d loadtests ]] && lint_dirs+=(loadtests)
"$PY" -m ruff check --no-cache "${lint_dirs[@]}"

echo "== Rust tests"
cargo build --locked --release --quiet
cargo test --locked

echo "== Python tests"
MASKSERVE_BIN=$PWD/target/release/maskserve "$PY" -m pytest -q --import-mode=importlib model-export/tests tests/python tests/deploy
if [[ -x loadtests/run.sh ]]; then
  echo "== k6 smoke"
  loadtests/run.sh smoke
fi
