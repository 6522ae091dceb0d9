#!/usr/bin/env bash
# Create the training virtual environment: pinned requirements, then the model-export package.
#
#   install-train.sh [--dry-run] VENV REQUIREMENTS [MODEL_EXPORT_DIR]
#
# Without MODEL_EXPORT_DIR only the venv and the pinned requirements are installed: the image
# keeps them in their own layer, so a change to model-export/ does not reinstall PyTorch.
# The maskexport/ package of MODEL_EXPORT_DIR is copied into the venv's site-packages (no
# package discovery, so other folders there do not matter); the dependencies its pyproject.toml
# declares, if any, are installed constrained by REQUIREMENTS. Used by docker/Dockerfile.train
# and by tests/deploy (outside Docker).
set -euo pipefail

DRY_RUN=0
PYTHON="${PYTHON:-python3}"

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "install-train.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 2 && $# -ne 3 ]]; then
  usage >&2
  exit 2
fi
VENV="$1"
REQUIREMENTS="$2"
MODEL_EXPORT="${3:-}"

if [[ -n "${MODEL_EXPORT}" && ! -d "${MODEL_EXPORT}/maskexport" ]]; then
  echo "install-train.sh: ${MODEL_EXPORT}/maskexport is not a directory" >&2
  exit 1
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
run "${PYTHON}" -m venv "${VENV}"
run "${VENV}/bin/pip" install --no-cache-dir -r "${REQUIREMENTS}"
if [[ -z "${MODEL_EXPORT}" ]]; then
  exit 0
fi
if [[ -f "${MODEL_EXPORT}/pyproject.toml" ]]; then
  mapfile -t DEPS < <("${PYTHON}" -c 'import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print("\n".join(tomllib.load(fh).get("project", {}).get("dependencies", [])))' \
    "${MODEL_EXPORT}/pyproject.toml")
  if [[ ${#DEPS[@]} -gt 0 && -n "${DEPS[0]}" ]]; then
    run "${VENV}/bin/pip" install --no-cache-dir -c "${REQUIREMENTS}" "${DEPS[@]}"
  fi
fi
if [[ "${DRY_RUN}" -eq 1 ]]; then
  SITE="${VENV}/lib/pythonX.Y/site-packages"
else
  SITE="$("${VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fi
run cp -r "${MODEL_EXPORT}/maskexport" "${SITE}/maskexport"
# Fail the build now, not at training time, if the package does not import.
run "${VENV}/bin/python" -c "import maskexport"
