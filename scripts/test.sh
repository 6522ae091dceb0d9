#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, parity, server over real HTTP), Python (model
# export parity against PyTorch, data, fixture, RLE through pycocotools, deploy manifests),
# lints, the k6 smoke scenario, and the images built and run in the machine's Docker engine
# (tests/containers; they skip, saying why, where no engine answers). Installs what it needs on a
# fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== installing Python dependencies"
"$PY" -m pip install --quiet --disable-pip-version-check -r model-export/requirements.txt \
  -r tests/deploy/requirements.txt -r loadtests/requirements.txt -r tests/containers/requirements.txt 2>&1 | grep -v "running pip as the 'root' user" || true
if docker version >/dev/null 2>&1; then
  # The base-image stand-ins are made with debootstrap; a local registry stands in for ECR.
  missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
ORT_DYLIB_PATH=$(scripts/ort-lib.sh)
export ORT_DYLIB_PATH
scripts/build-deps.sh

echo "== lints"
cargo fmt --all -- --check
# Each runtime alone and both together: the default (ONNX Runtime), tract without ONNX
# Runtime, and both.
cargo clippy --locked --all-targets --quiet -- -D warnings
cargo clippy --locked --all-targets --quiet --no-default-features --features tract -- -D warnings
cargo clippy --locked --all-targets --quiet --features tract -- -D warnings
(cd model-export && "$PY" -m ruff check . && "$PY" -m ruff format --check .)
lint_dirs=(tests scripts)
[[ -d loadtests ]] && lint_dirs+=(loadtests)
"$PY" -m ruff check --no-cache "${lint_dirs[@]}"

echo "== Rust tests"
# The binary without ONNX Runtime (tests/python/test_tract_binary.py), built in the same target
# directory so that it shares every compiled dependency, and copied out before the main
# release binary (both runtimes, ONNX Runtime the default) takes its place.
cargo build --locked --release --quiet --no-default-features --features tract
mkdir -p target/tract
cp target/release/maskserve target/tract/maskserve
cargo build --locked --release --quiet --features tract
cargo test --locked --features tract

echo "== Python tests"
MASKSERVE_BIN=$PWD/target/release/maskserve MASKSERVE_TRACT_BIN=$PWD/target/tract/maskserve \
  "$PY" -m pytest -q --import-mode=importlib model-export/tests tests/python tests/deploy
echo "== container tests (Docker engine)"
MASKSERVE_BIN=$PWD/target/release/maskserve "$PY" -m pytest -q -s --import-mode=importlib tests/containers
if [[ -x loadtests/run.sh ]]; then
  echo "== k6 smoke"
  loadtests/run.sh smoke
fi
