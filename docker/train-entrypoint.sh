#!/usr/bin/env bash
# ENTRYPOINT of the maskserve training image (installed as /usr/local/bin/maskserve-train).
#
# SageMaker starts a training container as `docker run IMAGE train`; this runs
# `python -m maskexport.sagemaker_train`, which reads /opt/ml/input/config/*.json and
# /opt/ml/input/data/<channel>/ and writes the servable model directory to /opt/ml/model.
# Any other command is executed as given (for debugging: `docker run IMAGE python -V`).
# `serve` is refused: serving uses the maskserve images (docker/Dockerfile.cpu, .gpu).
set -euo pipefail

PYTHON="${MASKSERVE_TRAIN_PYTHON:-python}"

case "${1:-train}" in
  train)
    [[ $# -gt 0 ]] && shift
    exec "${PYTHON}" -m maskexport.sagemaker_train "$@"
    ;;
  serve)
    echo "maskserve-train: this is the training image; deploy a maskserve serving image to serve" >&2
    exit 64
    ;;
  *)
    exec "$@"
    ;;
esac
