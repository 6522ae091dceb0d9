#!/usr/bin/env bash
# Render the manifests with the values in k8s/values.yaml and apply them with kubectl.
#
# usage: deploy.sh [options] operator|ack|plain [train|serve|batch|mme|ic|async|all]...
#   operator   SageMaker Operator for Kubernetes (sagemaker.aws.amazon.com/v1, end of life)
#   ack        ACK SageMaker controller (sagemaker.services.k8s.aws/v1alpha1)
#   plain      in-cluster Deployment + Service + HorizontalPodAutoscaler
#   components default to all = train serve batch (plain has only serve). Other endpoints,
#   deployed only when named: mme (multi-model endpoint; operator, ack), ic (inference
#   components; ack), async (asynchronous inference for large images; ack). Options go
#   anywhere.
# options:
#   --dry-run          render, then print every kubectl command instead of running it
#   --delete           delete the rendered objects instead (reverse order; keeps the namespace)
#   --wait             wait until training completed / endpoint InService / rollout done
#   --values FILE      extra values file (repeatable; later wins)
#   --set KEY=VALUE    override one value (repeatable)
#   --context CTX      kubectl context
#   --out DIR          keep the rendered manifests in DIR (default: a temporary directory)
#   --timeout DURATION kubectl wait timeout (default 60m)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY_RUN=0
DELETE=0
WAIT=0
OUT=""
TIMEOUT="60m"
RENDER_ARGS=()
KUBECTL=(kubectl)

# shellcheck source=SCRIPTDIR/../docker/build-steps/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../docker/build-steps/common.sh"

POSITIONAL=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --delete) DELETE=1; shift ;;
    --wait) WAIT=1; shift ;;
    --values) RENDER_ARGS+=(--values "$2"); shift 2 ;;
    --set) RENDER_ARGS+=(--set "$2"); shift 2 ;;
    --context) KUBECTL+=(--context "$2"); shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
if [[ ${#POSITIONAL[@]} -lt 1 ]]; then
  usage >&2
  exit 2
fi
FLAVOR="${POSITIONAL[0]}"
WANTED=("${POSITIONAL[@]:1}")
if [[ ${#WANTED[@]} -eq 0 ]]; then
  WANTED=(all)
fi

case "${FLAVOR}" in
  operator)
    GROUP="sagemaker.aws.amazon.com"
    echo "note: the SageMaker Operator for Kubernetes reached end of life on 2023-02-15;" \
      "prefer 'ack'" >&2
    ;;
  ack) GROUP="sagemaker.services.k8s.aws" ;;
  plain) GROUP="" ;;
  *) echo "deploy.sh: flavor must be operator, ack or plain, not '${FLAVOR}'" >&2; exit 2 ;;
esac

# "all" is the one-model path; mme, ic and async are other endpoints, deployed only when named.
NAMED=()
for component in "${WANTED[@]}"; do
  case "${component}" in
    all) NAMED+=(train serve batch) ;;
    train|serve|batch|mme|ic|async) NAMED+=("${component}") ;;
    *)
      echo "deploy.sh: unknown component '${component}'" \
        "(train, serve, batch, mme, ic, async, all)" >&2
      exit 2
      ;;
  esac
done
# Phases run in this order: the model that serve, batch, ic and async use is the training job's
# output.
PHASES=()
for phase in train serve batch mme ic async; do
  if [[ " ${NAMED[*]} " == *" ${phase} "* ]]; then
    PHASES+=("${phase}")
  fi
done

if [[ "${FLAVOR}" != ack && " ${PHASES[*]} " == *" ic "* ]]; then
  echo "deploy.sh: inference components (ic) exist only with ack" >&2
  exit 2
fi
if [[ "${FLAVOR}" == operator && " ${PHASES[*]} " == *" async "* ]]; then
  echo "deploy.sh: asynchronous inference (async) exists only with ack: the operator's" \
    "HostingDeployment has no asyncInferenceConfig (docs/deploy.md)" >&2
  exit 2
fi
if [[ "${FLAVOR}" == plain ]]; then
  if [[ " ${PHASES[*]} " != *" serve "* || " ${PHASES[*]} " == *" mme "* ||
    " ${PHASES[*]} " == *" async "* ]]; then
    echo "deploy.sh: plain has only the serve component" >&2
    exit 2
  fi
  PHASES=(serve)
fi
if [[ ${#PHASES[@]} -eq 0 ]]; then
  echo "deploy.sh: no component selected" >&2
  exit 2
fi

render() {
  python3 "${SCRIPT_DIR}/render_manifests.py" "${RENDER_ARGS[@]}" "$@"
}

if [[ -z "${OUT}" ]]; then
  OUT="$(mktemp -d)"
  trap 'rm -rf "${OUT}"' EXIT
fi
NAMESPACE="$(render --get namespace)"
K=("${KUBECTL[@]}" -n "${NAMESPACE}")

# The async container's settings, checked before anything is applied: an endpoint with a bad
# one would fail only once a request arrives (docs/deploy.md, "Asynchronous inference").
check_async_values() {
  local payload timeout body pixels output failure
  { read -r payload; read -r timeout; read -r body; read -r pixels; read -r output
    read -r failure; } < <(render --get async_max_payload_bytes \
    --get async_model_server_timeout_seconds --get async_body_timeout_seconds \
    --get async_max_pixels --get async_output_s3_uri --get async_failure_s3_uri)
  if [[ ! "${payload}" =~ ^[1-9][0-9]{0,9}$ ]] || (( payload > 1073741824 )); then
    echo "deploy.sh: async_max_payload_bytes '${payload}' must be 1 to 1073741824 (1 GiB; async" \
      "payloads are at most 1 GB)" >&2
    return 2
  fi
  if [[ ! "${timeout}" =~ ^[1-9][0-9]{0,3}$ ]] || (( timeout > 3600 )); then
    echo "deploy.sh: async_model_server_timeout_seconds '${timeout}' must be 1 to 3600 (an async" \
      "invocation's longest timeout)" >&2
    return 2
  fi
  if [[ ! "${body}" =~ ^[1-9][0-9]{0,3}$ ]] || (( body > timeout )); then
    echo "deploy.sh: async_body_timeout_seconds '${body}' must be whole seconds from 1 to" \
      "async_model_server_timeout_seconds (${timeout})" >&2
    return 2
  fi
  if [[ ! "${pixels}" =~ ^[1-9][0-9]{0,11}$ ]]; then
    echo "deploy.sh: async_max_pixels '${pixels}' must be a whole number of pixels" >&2
    return 2
  fi
  if [[ "${output}" != s3://?*/ || "${failure}" != s3://?*/ ]]; then
    echo "deploy.sh: async_output_s3_uri '${output}' and async_failure_s3_uri '${failure}'" \
      "must be s3:// prefixes ending in '/'" >&2
    return 2
  fi
  if [[ "${output}" == "${failure}" ]]; then
    echo "deploy.sh: async_output_s3_uri and async_failure_s3_uri must differ, so that" \
      "failures are told apart from results" >&2
    return 2
  fi
}
if [[ " ${PHASES[*]} " == *" async "* && "${DELETE}" -eq 0 ]]; then
  check_async_values || exit 2
fi

# Render one phase into OUT/PHASE; prints the files in apply order.
render_phase() {
  render --flavor "${FLAVOR}" --component "$1" --out "${OUT}/$1"
}

# The controller's CRDs must be installed before its custom resources can be applied.
check_crds() {
  local plurals crds=() plural
  plurals="$(python3 - "$@" <<'PY'
import sys
import yaml
plurals = {"TrainingJob": "trainingjobs", "HostingDeployment": "hostingdeployments",
           "BatchTransformJob": "batchtransformjobs", "Model": "models",
           "EndpointConfig": "endpointconfigs", "Endpoint": "endpoints",
           "TransformJob": "transformjobs", "InferenceComponent": "inferencecomponents"}
seen = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as fh:
        for doc in yaml.safe_load_all(fh):
            name = plurals.get((doc or {}).get("kind"))
            if name and name not in seen:
                seen.append(name)
print(" ".join(seen))
PY
  )"
  for plural in ${plurals}; do
    crds+=("${plural}.${GROUP}")
  done
  if [[ ${#crds[@]} -gt 0 ]]; then
    run "${KUBECTL[@]}" get crd "${crds[@]}"
  fi
}

wait_endpoint() {
  run "${K[@]}" wait "endpoint.${GROUP}/$1" \
    --for=jsonpath='{.status.endpointStatus}'=InService --timeout "${TIMEOUT}"
}

wait_for() {
  case "${FLAVOR}/$1" in
    plain/serve)
      run "${K[@]}" rollout status "deployment/$(render --get app_name)" --timeout "${TIMEOUT}"
      ;;
    */train)
      run "${K[@]}" wait "trainingjob.${GROUP}/$(render --get training_job_name)" \
        --for=jsonpath='{.status.trainingJobStatus}'=Completed --timeout "${TIMEOUT}"
      ;;
    operator/serve)
      run "${K[@]}" wait "hostingdeployment.${GROUP}/$(render --get endpoint_name)" \
        --for=jsonpath='{.status.endpointStatus}'=InService --timeout "${TIMEOUT}"
      ;;
    ack/serve)
      wait_endpoint "$(render --get endpoint_name)"
      ;;
    operator/mme)
      run "${K[@]}" wait "hostingdeployment.${GROUP}/$(render --get mme_endpoint_name)" \
        --for=jsonpath='{.status.endpointStatus}'=InService --timeout "${TIMEOUT}"
      ;;
    ack/mme)
      wait_endpoint "$(render --get mme_endpoint_name)"
      ;;
    ack/async)
      wait_endpoint "$(render --get async_endpoint_name)"
      ;;
    ack/ic)
      run "${K[@]}" wait "inferencecomponent.${GROUP}/$(render --get ic_inference_component_name)" \
        --for=jsonpath='{.status.inferenceComponentStatus}'=InService --timeout "${TIMEOUT}"
      ;;
    operator/batch)
      run "${K[@]}" wait "batchtransformjob.${GROUP}/$(render --get transform_job_name)" \
        --for=jsonpath='{.status.transformJobStatus}'=Completed --timeout "${TIMEOUT}"
      ;;
    ack/batch)
      run "${K[@]}" wait "transformjob.${GROUP}/$(render --get transform_job_name)" \
        --for=jsonpath='{.status.transformJobStatus}'=Completed --timeout "${TIMEOUT}"
      ;;
  esac
}

if [[ "${DELETE}" -eq 1 ]]; then
  # Reverse of the global apply order (file names are numbered), each object once; the
  # namespace stays (delete it by hand when nothing else lives there).
  declare -A BY_NAME=()
  for phase in "${PHASES[@]}"; do
    while IFS= read -r file; do
      name="$(basename "${file}")"
      [[ "${name}" == common-* ]] && continue
      BY_NAME["${name}"]="${file}"
    done < <(render_phase "${phase}")
  done
  mapfile -t NAMES < <(printf '%s\n' "${!BY_NAME[@]}" | sort -r)
  for name in "${NAMES[@]}"; do
    [[ -n "${name}" ]] && run "${KUBECTL[@]}" delete --ignore-not-found -f "${BY_NAME[${name}]}"
  done
  exit 0
fi

for (( p=0; p<${#PHASES[@]}; p++ )); do
  phase="${PHASES[$p]}"
  mapfile -t FILES < <(render_phase "${phase}")
  echo "# ${FLAVOR} ${phase}: ${#FILES[@]} manifest(s) rendered into ${OUT}/${phase}" >&2
  if [[ -n "${GROUP}" ]]; then
    check_crds "${FILES[@]}"
  fi
  for file in "${FILES[@]}"; do
    # SageMaker places an inference component only on an endpoint that is InService.
    if [[ "${FLAVOR}/${phase}" == ack/ic && "${file}" == *-inferencecomponent.yaml ]]; then
      wait_endpoint "$(render --get ic_endpoint_name)"
    fi
    run "${KUBECTL[@]}" apply -f "${file}"
  done
  # Later phases need the trained model, so training is always waited for when they follow.
  if [[ "${WAIT}" -eq 1 || ( "${phase}" == train && $((p + 1)) -lt ${#PHASES[@]} ) ]]; then
    wait_for "${phase}"
  fi
done
