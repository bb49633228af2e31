// A storm of 429s: a feature whose few keys are spent for the hour. Every answer is a clean 429
// with Retry-After, fast, and the server keeps serving.
import http from 'k6/http';
import { check } from 'k6';

export const options = {
  scenarios: {
    storm: { executor: 'constant-vus', vus: 16, duration: __ENV.DURATION || '15s' },
  },
  thresholds: {
    // 429 is the expected answer here, not a failure.
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<10'],
    checks: ['rate>0.999'],
  },
};

http.setResponseCallback(http.expectedStatuses(200, 429));
const params = { headers: { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}` } };

export default function () {
  const res = http.get(`${__ENV.BASE_URL}/key?feature=scarce`, params);
  check(res, {
    'spent: 429 (the first few uses: 200)': (r) => r.status === 429 || r.status === 200,
    'Retry-After >= 1 on 429': (r) => r.status !== 429 || Number(r.headers['Retry-After']) >= 1,
    'error body on 429': (r) => r.status !== 429 || r.json('error') === 'no key available for feature',
  });
}
