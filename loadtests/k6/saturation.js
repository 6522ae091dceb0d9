// Saturation (closed loop): VUS clients each send the next request as soon as the previous one
// is answered, for DURATION; images/s at saturation is the request rate. The bench harness uses it.
import { buildBodies, invoke, kindFor, SELECTED_KINDS, summary, thresholds, SUMMARY_STATS } from './lib.js';

const BODIES = buildBodies(SELECTED_KINDS);

export const options = {
  scenarios: {
    saturation: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '4', 10),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: thresholds('0.01', '60000'),
  summaryTrendStats: SUMMARY_STATS,
};

export default function () {
  invoke(BODIES, kindFor(__ITER), __ITER + __VU);
}

export function handleSummary(data) {
  return summary('saturation', data);
}
