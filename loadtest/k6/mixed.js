// GET /key while a trickle of admin writes (add a key, then delete it) goes on: readers never
// fail and stay fast; each write is durable before it answers.
import http from 'k6/http';
import { check } from 'k6';

const duration = __ENV.DURATION || '15s';
export const options = {
  scenarios: {
    readers: { executor: 'constant-vus', vus: 16, duration, exec: 'read' },
    writers: {
      executor: 'constant-arrival-rate', rate: 5, timeUnit: '1s', duration,
      preAllocatedVUs: 4, exec: 'write',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{scenario:readers}': ['p(99)<10'],
    'http_req_duration{scenario:writers}': ['p(99)<100'],
    checks: ['rate>0.999'],
  },
};

const auth = { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}` };

export function read() {
  const res = http.get(`${__ENV.BASE_URL}/key?feature=chat`, { headers: auth });
  check(res, { 'key 200': (r) => r.status === 200 });
}

export function write() {
  const name = `trickle-${__VU}-${__ITER}`;
  const body = JSON.stringify({ name, key: `sk-${name}`, tier: 'pro' });
  const added = http.post(`${__ENV.BASE_URL}/admin/keys`, body, {
    headers: { ...auth, 'Content-Type': 'application/json' },
  });
  if (!check(added, { 'add 201': (r) => r.status === 201 })) return;
  const removed = http.del(`${__ENV.BASE_URL}/admin/keys/${added.json('id')}`, null, { headers: auth });
  check(removed, { 'delete 200': (r) => r.status === 200 });
}
