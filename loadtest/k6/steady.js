// Steady GET /key: every answer is 200 with a key, under sustained load.
// Run by loadtest/k6.sh (BASE_URL, ADMIN_TOKEN from the environment).
import http from 'k6/http';
import { check } from 'k6';

export const options = {
  scenarios: {
    steady: { executor: 'constant-vus', vus: 16, duration: __ENV.DURATION || '15s' },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    // k6 saturates its own core first here: this checks behaviour under load, not capacity.
    http_req_duration: ['p(99)<10'],
    checks: ['rate>0.999'],
  },
};

const params = { headers: { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}` } };

export default function () {
  const res = http.get(`${__ENV.BASE_URL}/key?feature=chat`, params);
  check(res, {
    'status 200': (r) => r.status === 200,
    'has a key': (r) => r.json('key_id') !== undefined && r.json('value') !== undefined,
  });
}
