// Shared by the k6 scenarios: images, request bodies per content type, response checks, summary.
//
// Environment:
//   TARGET_URL    server base URL (default http://127.0.0.1:8080); load goes to localhost only
//   INVOKE_PATH   where the requests are POSTed (default /invocations; TorchServe: /predictions/<model>)
//   IMAGE_FILES   comma-separated image paths (loadtests/run.sh sets it from IMAGES)
//   IMAGES        directory with an index.txt (one file name a line), when IMAGE_FILES is unset
//   CONTENT_TYPE  image/png | image/jpeg | application/json (TF-Serving instances) |
//                 seed (the seed's {"img_id","img_data"} JSON) | mixed (all four in turn)
//   IMAGE_LIMIT   at most this many images per content type (default 16)
//   SUMMARY_FILE  where handleSummary writes the JSON summary
import http from 'k6/http';
import encoding from 'k6/encoding';
import { check } from 'k6';

export const TARGET = (__ENV.TARGET_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
export const INVOKE_PATH = __ENV.INVOKE_PATH || '/invocations';
export const CONTENT_TYPE = __ENV.CONTENT_TYPE || 'image/jpeg';
export const KINDS = ['image/png', 'image/jpeg', 'application/json', 'seed'];
const LIMIT = parseInt(__ENV.IMAGE_LIMIT || '16', 10);

function imagePaths() {
  if (__ENV.IMAGE_FILES) return __ENV.IMAGE_FILES.split(',').filter((p) => p.length > 0);
  if (!__ENV.IMAGES) throw new Error('set IMAGE_FILES or IMAGES');
  return open(`${__ENV.IMAGES}/index.txt`)
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .map((l) => `${__ENV.IMAGES}/${l}`);
}

const isPng = (p) => /\.png$/i.test(p);
const isJpeg = (p) => /\.jpe?g$/i.test(p);

// Bodies per kind, built once per VU in the init context.
export function buildBodies(kinds) {
  const paths = imagePaths();
  const out = {};
  for (const kind of kinds) {
    let sel = paths;
    if (kind === 'image/png') sel = paths.filter(isPng);
    else if (kind === 'image/jpeg') sel = paths.filter(isJpeg);
    else sel = paths.filter((p) => isPng(p) || isJpeg(p));
    sel = sel.slice(0, LIMIT);
    if (sel.length === 0) throw new Error(`no images for ${kind} in ${paths.length} files`);
    out[kind] = sel.map((p, i) => {
      const bytes = open(p, 'b');
      if (kind === 'image/png' || kind === 'image/jpeg') return { ct: kind, body: bytes };
      const b64 = encoding.b64encode(bytes);
      if (kind === 'seed') {
        return { ct: 'application/json', body: JSON.stringify({ img_id: `img-${i}`, img_data: b64 }), id: `img-${i}` };
      }
      return { ct: 'application/json', body: JSON.stringify({ instances: [{ b64 }] }) };
    });
  }
  return out;
}

// The kinds a timed scenario sends: CONTENT_TYPE, or all four when it is "mixed".
export const SELECTED_KINDS = CONTENT_TYPE === 'mixed' ? KINDS : [CONTENT_TYPE];

function validResult(r) {
  return (
    r !== null &&
    typeof r === 'object' &&
    Number.isInteger(r.width) &&
    Number.isInteger(r.height) &&
    Array.isArray(r.detections) &&
    r.detections.every(
      (d) =>
        Number.isInteger(d.class_id) &&
        typeof d.score === 'number' &&
        Array.isArray(d.box) &&
        d.box.length === 4 &&
        d.mask &&
        typeof d.mask.counts === 'string' &&
        d.mask.size[0] === r.height &&
        d.mask.size[1] === r.width,
    )
  );
}

function validSeed(r, id) {
  return (
    r !== null &&
    r.img_id === id &&
    Array.isArray(r.annotations) &&
    r.annotations.every(
      (a) => Array.isArray(a.bbox) && a.bbox.length === 4 && Number.isInteger(a.category_id) && a.segmentation,
    )
  );
}

function parse(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

// One INVOKE_PATH (/invocations) request of `kind` (the n-th of `bodies[kind]`, cycling), with checks.
export function invoke(bodies, kind, n) {
  const list = bodies[kind];
  const item = list[n % list.length];
  const res = http.post(`${TARGET}${INVOKE_PATH}`, item.body, {
    headers: { 'Content-Type': item.ct, Accept: 'application/json' },
    tags: { kind },
    timeout: __ENV.REQUEST_TIMEOUT || '60s',
  });
  check(
    res,
    {
      'status is 200': (r) => r.status === 200,
      'response has the expected shape': (r) => {
        const j = parse(r);
        if (kind === 'seed') return validSeed(j, item.id);
        if (kind === 'application/json') return j !== null && Array.isArray(j.predictions) && j.predictions.length === 1 && validResult(j.predictions[0]);
        return validResult(j);
      },
    },
    { kind },
  );
  return res;
}

// The kind for the iteration: CONTENT_TYPE, or the four in turn when it is "mixed".
export function kindFor(iter) {
  return CONTENT_TYPE === 'mixed' ? KINDS[iter % KINDS.length] : CONTENT_TYPE;
}

export function thresholds(defaultErrorRate, defaultP95) {
  return {
    http_req_failed: [`rate<=${__ENV.MAX_ERROR_RATE || defaultErrorRate}`],
    http_req_duration: [`p(95)<${__ENV.P95_MS || defaultP95}`],
    checks: [`rate>=${__ENV.MIN_CHECK_RATE || '0.99'}`],
  };
}

function fmt(v) {
  return typeof v === 'number' ? v.toFixed(2) : String(v);
}

// JSON summary to SUMMARY_FILE and a short text summary on stdout (no remote jslib).
export function summary(name, data) {
  const m = data.metrics;
  const d = (m.http_req_duration && m.http_req_duration.values) || {};
  const what = name === 'smoke' ? KINDS.join(', ') : CONTENT_TYPE;
  const lines = [`scenario ${name} against ${TARGET} (${what})`];
  lines.push(`  requests ${m.http_reqs ? m.http_reqs.values.count : 0}, rate ${fmt(m.http_reqs ? m.http_reqs.values.rate : 0)}/s`);
  lines.push(`  failed ${fmt(m.http_req_failed ? m.http_req_failed.values.rate : 0)}, checks ${fmt(m.checks ? m.checks.values.rate : 0)}`);
  lines.push(`  latency ms: p50 ${fmt(d.med)} p90 ${fmt(d['p(90)'])} p95 ${fmt(d['p(95)'])} p99 ${fmt(d['p(99)'])} max ${fmt(d.max)}`);
  if (m.dropped_iterations) lines.push(`  dropped iterations ${m.dropped_iterations.values.count}`);
  for (const [k, v] of Object.entries(m)) {
    if (v.thresholds) {
      for (const [t, r] of Object.entries(v.thresholds)) lines.push(`  threshold ${k} ${t}: ${r.ok ? 'ok' : 'FAILED'}`);
    }
  }
  const out = { stdout: lines.join('\n') + '\n' };
  out[__ENV.SUMMARY_FILE || `loadtests/results/${name}-summary.json`] = JSON.stringify(data, null, 2);
  return out;
}

export const SUMMARY_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];
