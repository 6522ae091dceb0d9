#!/usr/bin/env bash
# Build the maskserve images (GPU and CPU serving, training), push them to Amazon ECR in
# REGION (or to another registry with --registry) and print their URIs. Repository names and
# the tag come from k8s/values.yaml (serving_repository, training_repository, image_tag), so the
# URIs printed are the ones the rendered manifests use for the same settings; the comment line
# printed before them names the render_manifests.py/deploy.sh --set flags that give them.
#
# usage: build_and_push.sh [OPTIONS] REGION
#        build_and_push.sh --registry HOST[:PORT][/PATH] [OPTIONS] [REGION]
#   --dry-run      print every aws/docker command instead of running it
#   --account      AWS account id (default: aws sts get-caller-identity; with --registry,
#                  aws_account_id in k8s/values.yaml)
#   --tag          image tag (default: image_tag in k8s/values.yaml)
#   --images       comma-separated subset of gpu,cpu,train (default: all three)
#   --platform     target platform (default linux/amd64; the GPU image is amd64 only)
#   --registry     push to this registry instead of ECR: no ECR repositories, no ECR login
#                  (run `docker login HOST` first if it needs one), no AWS calls; the URIs are
#                  ecr_registry=HOST[:PORT][/PATH] in the manifests (render with
#                  --set ecr_registry=...). REGION is then optional (default: region in
#                  k8s/values.yaml).
#   --build-arg    K=V passed to every `docker build` (repeatable), e.g. local stand-ins for the
#                  FROM images: --build-arg RUNTIME_IMAGE=maskserve-base/debian:12-slim
#                  (docker/base-images/build.sh --build-args cpu prints the ones it makes)
# Docker's output goes to stderr; stdout has the dry-run commands and the URIs. The build uses
# the builder docker picks: BuildKit (buildx) where installed, else the legacy builder;
# DOCKER_BUILDKIT=0|1 from the caller decides. ECR needs AWS credentials allowed to use it.
#
# Against a local stand-in for ECR (Debian's docker-registry; the Docker engine talks plain
# HTTP to registries on 127.0.0.0/8):
#   docker-registry serve config.yml          # http: addr: 127.0.0.1:5000
#   scripts/build_and_push.sh --registry 127.0.0.1:5000 --images cpu \
#     $(bash docker/base-images/build.sh --build-args cpu | sed 's/^/--build-arg /')
#   scripts/render_manifests.py --flavor plain --set ecr_registry=127.0.0.1:5000 \
#     --set 'plain_image=${serving_image_cpu}'      # the Deployment on the CPU image
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
DRY_RUN=0
ACCOUNT=""
TAG=""
IMAGES="gpu,cpu,train"
PLATFORM="linux/amd64"
REGISTRY_OVERRIDE=""
BUILD_ARGS=()

# shellcheck source=SCRIPTDIR/../docker/build-steps/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../docker/build-steps/common.sh"

need_value() {
  if [[ $# -lt 2 || -z "$2" ]]; then
    echo "build_and_push.sh: $1 needs a value" >&2
    exit 2
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --account) need_value "$@"; ACCOUNT="$2"; shift 2 ;;
    --tag) need_value "$@"; TAG="$2"; shift 2 ;;
    --images) need_value "$@"; IMAGES="$2"; shift 2 ;;
    --platform) need_value "$@"; PLATFORM="$2"; shift 2 ;;
    --registry) need_value "$@"; REGISTRY_OVERRIDE="$2"; shift 2 ;;
    --build-arg)
      need_value "$@"
      if [[ ! "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
        echo "build_and_push.sh: --build-arg takes KEY=VALUE, not '$2'" >&2
        exit 2
      fi
      BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build_and_push.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
REGION=""
if [[ $# -eq 1 ]]; then
  REGION="$1"
elif [[ $# -ne 0 || -z "${REGISTRY_OVERRIDE}" ]]; then
  usage >&2
  exit 2
fi
if [[ -n "${REGION}" && ! "${REGION}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]]; then
  echo "build_and_push.sh: '${REGION}' is not an AWS region" >&2
  exit 2
fi
# host[:port], then optional path components (a namespace in the registry), as docker parses them.
REGISTRY_RE='^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$'
if [[ -n "${REGISTRY_OVERRIDE}" && ! "${REGISTRY_OVERRIDE}" =~ ${REGISTRY_RE} ]]; then
  echo "build_and_push.sh: '${REGISTRY_OVERRIDE}' is not a registry (HOST[:PORT][/PATH])" >&2
  exit 2
fi
IFS=',' read -r -a WANTED <<<"${IMAGES}"
for image in "${WANTED[@]}"; do
  case "${image}" in
    gpu|cpu|train) ;;
    *) echo "build_and_push.sh: unknown image '${image}' (gpu, cpu, train)" >&2; exit 2 ;;
  esac
done

if [[ -z "${ACCOUNT}" && -z "${REGISTRY_OVERRIDE}" ]]; then
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    run aws sts get-caller-identity --query Account --output text
    ACCOUNT="000000000000"
    echo "# (dry run: account id shown as ${ACCOUNT})"
  else
    ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"
  fi
fi

# The values overrides that make render_manifests.py give these images' URIs.
SETS=()
[[ -z "${REGION}" ]] || SETS+=(--set "region=${REGION}")
[[ -z "${ACCOUNT}" ]] || SETS+=(--set "aws_account_id=${ACCOUNT}")
[[ -z "${TAG}" ]] || SETS+=(--set "image_tag=${TAG}")
[[ -z "${REGISTRY_OVERRIDE}" ]] || SETS+=(--set "ecr_registry=${REGISTRY_OVERRIDE}")
values() {
  python3 "${SCRIPT_DIR}/render_manifests.py" "${SETS[@]}" --get "$1"
}
if [[ -z "${REGION}" ]]; then
  REGION="$(values region)"
fi

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

# Docker's progress output goes to stderr, so that stdout is the dry run or the URIs.
noisy() {
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    run "$@"
  else
    "$@" >&2
  fi
}

if [[ -z "${REGISTRY_OVERRIDE}" ]]; then
  # ---- ECR repositories ------------------------------------------------------------------------
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
    noisy aws ecr create-repository --region "${REGION}" --repository-name "${repo}" \
      --image-scanning-configuration scanOnPush=true
  done

  # ---- log in ------------------------------------------------------------------------------
  if [[ "${DRY_RUN}" -eq 1 ]]; then
    echo "+ aws ecr get-login-password --region ${REGION} | docker login --username AWS --password-stdin ${REGISTRY}"
  else
    aws ecr get-login-password --region "${REGION}" \
      | docker login --username AWS --password-stdin "${REGISTRY}" >&2
  fi
fi

# ---- build, push ------------------------------------------------------------------------------
for image in "${WANTED[@]}"; do
  platform="${PLATFORM}"
  if [[ "${image}" == "gpu" ]]; then
    platform="linux/amd64"
  fi
  noisy docker build --platform "${platform}" "${BUILD_ARGS[@]}" \
    -f "${REPO_ROOT}/${DOCKERFILE[${image}]}" -t "${URI[${image}]}" "${REPO_ROOT}"
  noisy docker push "${URI[${image}]}"
done

printf '# Images; the manifests carry these URIs when rendered with:'
printf ' %q' "${SETS[@]}"
printf '\n'
for image in "${WANTED[@]}"; do
  case "${image}" in
    gpu) echo "serving_image_gpu=${URI[gpu]}" ;;
    cpu) echo "serving_image_cpu=${URI[cpu]}" ;;
    train) echo "training_image=${URI[train]}" ;;
  esac
done
