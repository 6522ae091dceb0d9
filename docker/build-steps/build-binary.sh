#!/usr/bin/env bash
# Build the maskserve release binary and install it into OUT_DIR.
#
#   build-binary.sh [--dry-run] [--src DIR] OUT_DIR
#   build-binary.sh [--dry-run] [--src DIR] --deps-only
#
# --deps-only compiles the dependencies alone (from Cargo.toml and Cargo.lock, with a stub crate),
# so that an image build caches them in their own layer and a change to src/ recompiles only
# maskserve; the stub's own artifacts are removed so the real sources are always rebuilt.
# Runs in the Rust builder stage of docker/Dockerfile.{cpu,gpu} (with /src the crate) and from
# tests/deploy in --dry-run mode. Uses --locked when Cargo.lock is present, so the image
# builds exactly the dependency versions that CI tested.
set -euo pipefail

DRY_RUN=0
DEPS_ONLY=0
SRC="."
CARGO="${CARGO:-cargo}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --src) SRC="$2"; shift 2 ;;
    --deps-only) DEPS_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build-binary.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ ${DEPS_ONLY} -eq 0 && $# -ne 1 ]] || [[ ${DEPS_ONLY} -eq 1 && $# -ne 0 ]]; then
  usage >&2
  exit 2
fi
OUT_DIR="${1:-}"

if [[ ! -f "${SRC}/Cargo.toml" ]]; then
  echo "build-binary.sh: no Cargo.toml in ${SRC}" >&2
  exit 1
fi

CARGO_ARGS=(build --release --bin maskserve --manifest-path "${SRC}/Cargo.toml")
if [[ -f "${SRC}/Cargo.lock" ]]; then
  CARGO_ARGS+=(--locked)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-${SRC}/target}"

if [[ ${DEPS_ONLY} -eq 1 ]]; then
  if [[ -e "${SRC}/src" ]]; then
    echo "build-binary.sh: --deps-only wants a crate without src/ (it writes a stub there)" >&2
    exit 1
  fi
  run mkdir -p "${SRC}/src"
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    echo "+ <stub ${SRC}/src/main.rs and ${SRC}/src/lib.rs>"
  else
    echo 'fn main() {}' >"${SRC}/src/main.rs"
    : >"${SRC}/src/lib.rs"
  fi
  run "${CARGO}" "${CARGO_ARGS[@]}"
  run rm -rf "${SRC}/src"
  # The stub's fingerprints would let cargo take the real sources (older mtimes) as built.
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    echo "+ rm -rf ${TARGET_DIR}/release/{.fingerprint,deps}/*maskserve* ${TARGET_DIR}/release/maskserve*"
  else
    rm -rf "${TARGET_DIR}"/release/.fingerprint/maskserve-* "${TARGET_DIR}"/release/deps/*maskserve* \
      "${TARGET_DIR}"/release/maskserve* "${TARGET_DIR}"/release/libmaskserve*
  fi
  exit 0
fi
run "${CARGO}" "${CARGO_ARGS[@]}"
run mkdir -p "${OUT_DIR}"
run install -m 0755 "${TARGET_DIR}/release/maskserve" "${OUT_DIR}/maskserve"
