// Smoke: a few requests of each content type (PNG, JPEG, TF-Serving JSON, the seed's JSON), one
// at a time; every request must succeed and every check pass. CI runs this one.
import { buildBodies, KINDS, invoke, summary, SUMMARY_STATS } from './lib.js';

const PER_KIND = parseInt(__ENV.SMOKE_PER_KIND || '3', 10);

const BODIES = buildBodies(KINDS);

export const options = {
  scenarios: {
    smoke: { executor: 'per-vu-iterations', vus: 1, iterations: PER_KIND * KINDS.length, maxDuration: '60s' },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    http_req_duration: [`p(95)<${__ENV.P95_MS || 10000}`],
  },
  summaryTrendStats: SUMMARY_STATS,
};

export default function () {
  const i = __ITER;
  invoke(BODIES, KINDS[Math.floor(i / PER_KIND) % KINDS.length], i);
}

export function handleSummary(data) {
  return summary('smoke', data);
}
