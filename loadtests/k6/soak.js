// Soak: a moderate constant arrival rate (RATE, default 2/s) for a long time (DURATION, default
// 30m), all content types in turn; watch latency drift, errors and the server's RSS (run.sh
// samples it into the results folder).
import { buildBodies, invoke, kindFor, SELECTED_KINDS, summary, thresholds, SUMMARY_STATS } from './lib.js';

const RATE = parseFloat(__ENV.RATE || '2');
const VUS = parseInt(__ENV.VUS || String(Math.max(4, Math.ceil(RATE * 2))), 10);

const BODIES = buildBodies(SELECTED_KINDS);

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: Math.round(RATE * 100),
      timeUnit: '100s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: VUS,
      maxVUs: parseInt(__ENV.MAX_VUS || String(VUS * 2), 10),
    },
  },
  thresholds: thresholds('0.001', '2000'),
  summaryTrendStats: SUMMARY_STATS,
};

export default function () {
  invoke(BODIES, kindFor(__ITER), __ITER + __VU);
}

export function handleSummary(data) {
  return summary('soak', data);
}
