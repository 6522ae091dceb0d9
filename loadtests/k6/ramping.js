// Ramping arrival rate: from START_RATE up to RATE over DURATION, hold RATE for DURATION, then
// down to START_RATE over DURATION (three stages).
import { buildBodies, invoke, kindFor, SELECTED_KINDS, summary, thresholds, SUMMARY_STATS } from './lib.js';

const RATE = parseFloat(__ENV.RATE || '5');
const START = parseFloat(__ENV.START_RATE || '1');
const STAGE = __ENV.DURATION || '20s';
const VUS = parseInt(__ENV.VUS || String(Math.max(4, Math.ceil(RATE * 2))), 10);

const BODIES = buildBodies(SELECTED_KINDS);

export const options = {
  scenarios: {
    ramping: {
      executor: 'ramping-arrival-rate',
      startRate: Math.round(START * 100),
      timeUnit: '100s',
      preAllocatedVUs: VUS,
      maxVUs: parseInt(__ENV.MAX_VUS || String(VUS * 2), 10),
      stages: [
        { target: Math.round(RATE * 100), duration: STAGE },
        { target: Math.round(RATE * 100), duration: STAGE },
        { target: Math.round(START * 100), duration: STAGE },
      ],
    },
  },
  thresholds: thresholds('0.01', '3000'),
  summaryTrendStats: SUMMARY_STATS,
};

export default function () {
  invoke(BODIES, kindFor(__ITER), __ITER + __VU);
}

export function handleSummary(data) {
  return summary('ramping', data);
}
