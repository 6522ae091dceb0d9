#!/usr/bin/env bash
# Download an ONNX Runtime wheel from the Python package index and extract the shared
# libraries that maskserve loads at run time (ORT_DYLIB_PATH) into DEST.
#
#   fetch-ort.sh [--dry-run] [--version V] [--platform TAG] [--python-version X.Y] cpu|gpu DEST
#
#   cpu: wheel onnxruntime==V     -> libonnxruntime.so.V, libonnxruntime_providers_shared.so
#   gpu: wheel onnxruntime-gpu==V -> libonnxruntime.so.V, libonnxruntime_providers_shared.so,
#                                    libonnxruntime_providers_cuda.so,
#                                    libonnxruntime_providers_tensorrt.so
#
# The libraries do not depend on the Python version of the wheel, so the native pip platform
# is used unless --platform (e.g. manylinux_2_28_aarch64) asks for another one.
# Used by docker/Dockerfile.{cpu,gpu} and by tests/deploy (outside Docker).
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
PLATFORM=""
PY_VERSION=""

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --version) ORT_VERSION="$2"; shift 2 ;;
    --platform) PLATFORM="$2"; shift 2 ;;
    --python-version) PY_VERSION="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "fetch-ort.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done

if [[ $# -ne 2 ]]; then
  usage >&2
  exit 2
fi
FLAVOR="$1"
DEST="$2"

case "${FLAVOR}" in
  cpu)
    PACKAGE="onnxruntime"
    LIBS=("libonnxruntime.so.${ORT_VERSION}" "libonnxruntime_providers_shared.so")
    ;;
  gpu)
    PACKAGE="onnxruntime-gpu"
    LIBS=("libonnxruntime.so.${ORT_VERSION}" "libonnxruntime_providers_shared.so"
          "libonnxruntime_providers_cuda.so" "libonnxruntime_providers_tensorrt.so")
    ;;
  *) echo "fetch-ort.sh: flavor must be cpu or gpu, not '${FLAVOR}'" >&2; exit 2 ;;
esac

PIP_ARGS=(download --no-deps --no-cache-dir --only-binary=:all: "${PACKAGE}==${ORT_VERSION}")
if [[ -n "${PLATFORM}" ]]; then
  PIP_ARGS+=(--platform "${PLATFORM}" --python-version "${PY_VERSION:-3.12}")
elif [[ -n "${PY_VERSION}" ]]; then
  PIP_ARGS+=(--python-version "${PY_VERSION}")
fi

if [[ "${DRY_RUN}" -eq 1 ]]; then
  WHEEL_DIR="/tmp/ort-wheel.dry-run"
else
  WHEEL_DIR="$(mktemp -d)"
  trap 'rm -rf "${WHEEL_DIR}"' EXIT
fi

run "${PYTHON}" -m pip "${PIP_ARGS[@]}" --dest "${WHEEL_DIR}"
run mkdir -p "${DEST}"

# Extract onnxruntime/capi/<lib> for each wanted library, flat, into DEST.
EXTRACT='import pathlib, sys, zipfile
wheel_dir, dest, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
wheels = sorted(wheel_dir.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {[w.name for w in wheels]}")
with zipfile.ZipFile(wheels[0]) as zf:
    members = {pathlib.PurePosixPath(n).name: n for n in zf.namelist() if "/capi/" in n}
    missing = [w for w in wanted if w not in members]
    if missing:
        sys.exit(f"{wheels[0].name} lacks {missing}")
    for name in wanted:
        target = dest / name
        target.write_bytes(zf.read(members[name]))
        target.chmod(0o755)
        print(f"extracted {name} ({target.stat().st_size} bytes) from {wheels[0].name}")'

if [[ "${DRY_RUN}" -eq 1 ]]; then
  echo "+ ${PYTHON} -c <extract onnxruntime/capi/{${LIBS[*]}}> ${WHEEL_DIR} ${DEST}"
else
  "${PYTHON}" -c "${EXTRACT}" "${WHEEL_DIR}" "${DEST}" "${LIBS[@]}"
fi
# Unversioned name, for tools that look for libonnxruntime.so.
run ln -sf "libonnxruntime.so.${ORT_VERSION}" "${DEST}/libonnxruntime.so"
