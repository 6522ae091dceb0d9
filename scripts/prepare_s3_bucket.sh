#!/usr/bin/env bash
# Put COCO 2017 (train/val images and instance annotations) into the layout the TrainingJob's
# channels read (k8s/values.yaml: train_s3_uri, val_s3_uri):
#
#   s3://BUCKET/coco/train/images/*.jpg   s3://BUCKET/coco/train/annotations.json
#   s3://BUCKET/coco/val/images/*.jpg     s3://BUCKET/coco/val/annotations.json
#
# SageMaker copies them to /opt/ml/input/data/{train,val}/ in the training container.
# Creates the bucket (public access blocked) if it does not exist. Needs about 45 GB of free
# disk in the work directory; best run on an EC2 instance in the bucket's region.
#
# usage: prepare_s3_bucket.sh [--dry-run] [--region REGION] [--workdir DIR] [--keep] BUCKET
#   --dry-run   print every aws/curl/unzip command instead of running it
#   --region    bucket region (default: $AWS_REGION, else region in k8s/values.yaml)
#   --workdir   where the archives are downloaded and unpacked (default: ./coco-download)
#   --keep      keep the downloaded and unpacked files afterwards
# COCO_BASE_URL overrides where the COCO 2017 archives are downloaded from
# (COCO_BASE_URL/zips/train2017.zip, .../zips/val2017.zip,
# .../annotations/annotations_trainval2017.zip). Needs the AWS CLI, curl and unzip.
#
# Against a local S3-compatible server instead of AWS: the AWS CLI (v2 >= 2.13, v1 >= 1.29)
# sends every request to AWS_ENDPOINT_URL when it is set, e.g. moto (pip install 'moto[server]'):
#   moto_server -H 127.0.0.1 -p 5001 &
#   export AWS_ENDPOINT_URL=http://127.0.0.1:5001 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
#   COCO_BASE_URL=http://127.0.0.1:8000 scripts/prepare_s3_bucket.sh "$(scripts/render_manifests.py --get bucket)"
# (COCO_BASE_URL here serves stand-in archives with COCO's names and layout, e.g. from
# `python -m http.server 8000`; tests/containers/test_registry_s3.py makes small ones.)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COCO_BASE_URL="${COCO_BASE_URL:-http://images.cocodataset.org}"
PREFIX="coco"
DRY_RUN=0
KEEP=0
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
WORKDIR="./coco-download"

# shellcheck source=SCRIPTDIR/../docker/build-steps/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../docker/build-steps/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --region) REGION="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "prepare_s3_bucket.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -ne 1 ]]; then
  usage >&2
  exit 2
fi
BUCKET="${1#s3://}"
BUCKET="${BUCKET%/}"
if [[ ! "${BUCKET}" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
  echo "prepare_s3_bucket.sh: '${BUCKET}' is not a valid S3 bucket name" >&2
  exit 2
fi
if [[ -z "${REGION}" ]]; then
  REGION="$(python3 "${SCRIPT_DIR}/render_manifests.py" --get region)"
fi
VALUES_BUCKET="$(python3 "${SCRIPT_DIR}/render_manifests.py" --get bucket)"
if [[ "${VALUES_BUCKET}" != "${BUCKET}" ]]; then
  echo "note: k8s/values.yaml has bucket '${VALUES_BUCKET}'; set bucket: ${BUCKET} there" >&2
fi

DEST="s3://${BUCKET}/${PREFIX}"
if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
  echo "prepare_s3_bucket.sh: S3 requests go to AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL}" >&2
fi

# ---- bucket ----------------------------------------------------------------------------------
if [[ "${DRY_RUN}" -eq 1 ]]; then
  echo "# if the bucket does not exist:"
  run aws s3api head-bucket --region "${REGION}" --bucket "${BUCKET}"
  BUCKET_EXISTS=0
elif aws s3api head-bucket --region "${REGION}" --bucket "${BUCKET}" >/dev/null 2>&1; then
  BUCKET_EXISTS=1
else
  BUCKET_EXISTS=0
fi
if [[ "${BUCKET_EXISTS}" -eq 0 ]]; then
  run aws s3 mb "s3://${BUCKET}" --region "${REGION}"
  run aws s3api put-public-access-block --bucket "${BUCKET}" --region "${REGION}" \
    --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
fi

# ---- download and unpack ---------------------------------------------------------------------
run mkdir -p "${WORKDIR}"
for archive in zips/train2017.zip zips/val2017.zip annotations/annotations_trainval2017.zip; do
  # -C - resumes an interrupted download; unzip checks every member's CRC below.
  run curl -fL --retry 5 --retry-delay 10 -C - -o "${WORKDIR}/$(basename "${archive}")" \
    "${COCO_BASE_URL}/${archive}"
done
for archive in train2017.zip val2017.zip annotations_trainval2017.zip; do
  run unzip -q -o "${WORKDIR}/${archive}" -d "${WORKDIR}"
done

# ---- upload in the training layout ------------------------------------------------------------
for split in train val; do
  run aws s3 sync --only-show-errors --region "${REGION}" \
    "${WORKDIR}/${split}2017" "${DEST}/${split}/images/"
  run aws s3 cp --only-show-errors --region "${REGION}" \
    "${WORKDIR}/annotations/instances_${split}2017.json" "${DEST}/${split}/annotations.json"
done
run aws s3 ls --region "${REGION}" "${DEST}/"

if [[ "${KEEP}" -eq 0 ]]; then
  run rm -rf "${WORKDIR}/train2017" "${WORKDIR}/val2017" "${WORKDIR}/annotations" \
    "${WORKDIR}/train2017.zip" "${WORKDIR}/val2017.zip" "${WORKDIR}/annotations_trainval2017.zip"
fi
echo "COCO 2017 is in ${DEST}/train/ and ${DEST}/val/"
