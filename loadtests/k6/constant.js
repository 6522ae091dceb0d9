// Constant arrival rate (open loop): RATE requests/s for DURATION, whatever the latency.
import { buildBodies, invoke, kindFor, SELECTED_KINDS, summary, thresholds, SUMMARY_STATS } from './lib.js';

const RATE = parseFloat(__ENV.RATE || '5');
const VUS = parseInt(__ENV.VUS || String(Math.max(4, Math.ceil(RATE * 2))), 10);

const BODIES = buildBodies(SELECTED_KINDS);

export const options = {
  scenarios: {
    constant: {
      executor: 'constant-arrival-rate',
      rate: Math.round(RATE * 100),
      timeUnit: '100s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: VUS,
      maxVUs: parseInt(__ENV.MAX_VUS || String(VUS * 2), 10),
    },
  },
  thresholds: thresholds('0.01', '2000'),
  summaryTrendStats: SUMMARY_STATS,
};

export default function () {
  invoke(BODIES, kindFor(__ITER), __ITER + __VU);
}

export function handleSummary(data) {
  return summary('constant', data);
}
