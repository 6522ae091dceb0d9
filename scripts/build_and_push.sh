#!/usr/bin/env bash
# Build the maskserve images (GPU and CPU serving, training), push them to Amazon ECR in
# REGION and print their URIs. Repository names and the tag come from k8s/values.yaml
# (serving_repository, training_repository, image_tag), so the URIs printed are the ones the
# rendered manifests use for the same account and region.
#
# usage: build_and_push.sh [--dry-run] [--account ID] [--tag TAG] [--images LIST] REGION
#   --dry-run    print every aws/docker command instead of running it
#   --account    AWS account id (default: aws sts get-caller-identity)
#   --tag        image tag (default: image_tag in k8s/values.yaml)
#   --images     comma-separated subset of gpu,cpu,train (default: all three)
#   --platform   target platform (default linux/amd64; the GPU image is amd64 only)
# Needs Docker with BuildKit, and AWS credentials allowed to use ECR.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
DRY_RUN=0
ACCOUNT=""
TAG=""
IMAGES="gpu,cpu,train"
PLATFORM="linux/amd64"

# shellcheck source=SCRIPTDIR/../docker/build-steps/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../docker/build-steps/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --account) ACCOUNT="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --images) IMAGES="$2"; shift 2 ;;
    --platform) PLATFORM="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build_and_push.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 1 ]]; then
  usage >&2
  exit 2
fi
REGION="$1"
if [[ ! "${REGION}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]]; then
  echo "build_and_push.sh: '${REGION}' is not an AWS region" >&2
  exit 2
fi
IFS=',' read -r -a WANTED <<<"${IMAGES}"
for image in "${WANTED[@]}"; do
  case "${image}" in
    gpu|cpu|train) ;;
    *) echo "build_and_push.sh: unknown image '${image}' (gpu, cpu, train)" >&2; exit 2 ;;
  esac
done

if [[ -z "${ACCOUNT}" ]]; then
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    run aws sts get-caller-identity --query Account --output text
    ACCOUNT="000000000000"
    echo "# (dry run: account id shown as ${ACCOUNT})"
  else
    ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"
  fi
fi

values() {
  local args=(--set "region=${REGION}" --set "aws_account_id=${ACCOUNT}")
  if [[ -n "${TAG}" ]]; then
    args+=(--set "image_tag=${TAG}")
  fi
  python3 "${SCRIPT_DIR}/render_manifests.py" "${args[@]}" --get "$1"
}

REGISTRY="$(values ecr_registry)"
declare -A URI=(
  [gpu]="$(values serving_image_gpu)"
  [cpu]="$(values serving_image_cpu)"
  [train]="$(values training_image)"
)
declare -A DOCKERFILE=(
  [gpu]="docker/Dockerfile.gpu"
  [cpu]="docker/Dockerfile.cpu"
  [train]="docker/Dockerfile.train"
)

# ---- ECR repositories --------------------------------------------------------------------------
declare -A REPOS=()
for image in "${WANTED[@]}"; do
  uri="${URI[${image}]}"
  repo="${uri#"${REGISTRY}/"}"
  REPOS["${repo%%:*}"]=1
done
for repo in "${!REPOS[@]}"; do
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    echo "# if the repository does not exist:"
    run aws ecr describe-repositories --region "${REGION}" --repository-names "${repo}"
  elif aws ecr describe-repositories --region "${REGION}" --repository-names "${repo}" \
      >/dev/null 2>&1; then
    continue
  fi
  run aws ecr create-repository --region "${REGION}" --repository-name "${repo}" \
    --image-scanning-configuration scanOnPush=true
done

# ---- log in, build, push --------------------------------------------------------------------
if [[ "${DRY_RUN}" -eq 1 ]]; then
  echo "+ aws ecr get-login-password --region ${REGION} | docker login --username AWS --password-stdin ${REGISTRY}"
else
  aws ecr get-login-password --region "${REGION}" \
    | docker login --username AWS --password-stdin "${REGISTRY}"
fi
export DOCKER_BUILDKIT=1
for image in "${WANTED[@]}"; do
  platform="${PLATFORM}"
  if [[ "${image}" == "gpu" ]]; then
    platform="linux/amd64"
  fi
  run docker build --platform "${platform}" -f "${REPO_ROOT}/${DOCKERFILE[${image}]}" \
    -t "${URI[${image}]}" "${REPO_ROOT}"
  run docker push "${URI[${image}]}"
done

echo "# Images (use these account/region/tag values in k8s/values.yaml):"
for image in "${WANTED[@]}"; do
  case "${image}" in
    gpu) echo "serving_image_gpu=${URI[gpu]}" ;;
    cpu) echo "serving_image_cpu=${URI[cpu]}" ;;
    train) echo "training_image=${URI[train]}" ;;
  esac
done
