#!/usr/bin/env bash
# Build the maskserve release binary and install it into OUT_DIR.
#
#   build-binary.sh [--dry-run] [--src DIR] OUT_DIR
#
# Runs in the Rust builder stage of docker/Dockerfile.{cpu,gpu} (with /src the crate) and from
# tests/deploy in --dry-run mode. Uses --locked when Cargo.lock is present, so the image
# builds exactly the dependency versions that CI tested.
set -euo pipefail

DRY_RUN=0
SRC="."
CARGO="${CARGO:-cargo}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --src) SRC="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build-binary.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 1 ]]; then
  usage >&2
  exit 2
fi
OUT_DIR="$1"

if [[ ! -f "${SRC}/Cargo.toml" ]]; then
  echo "build-binary.sh: no Cargo.toml in ${SRC}" >&2
  exit 1
fi

CARGO_ARGS=(build --release --bin maskserve --manifest-path "${SRC}/Cargo.toml")
if [[ -f "${SRC}/Cargo.lock" ]]; then
  CARGO_ARGS+=(--locked)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-${SRC}/target}"

run "${CARGO}" "${CARGO_ARGS[@]}"
run mkdir -p "${OUT_DIR}"
run install -m 0755 "${TARGET_DIR}/release/maskserve" "${OUT_DIR}/maskserve"
