// The closed loop of loadtest/provider.sh in k6: draw a key, call the mock provider with it, and
// (REPORT=on) report the provider's answer. Counts provider 429s and 401s; the thresholds only
// ask that the broker's own answers are clean (200 or 429 with Retry-After) and reports succeed.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const rate = Number(__ENV.RATE || 60);
export const options = {
  scenarios: {
    loop: {
      executor: 'constant-arrival-rate',
      rate,
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 16,
    },
  },
  thresholds: {
    checks: ['rate>0.999'],
  },
};

const providerLimited = new Counter('provider_429');
const providerRevoked = new Counter('provider_401');
const providerErrors = new Counter('provider_5xx');
const providerCalls = new Counter('provider_calls');
const report = __ENV.REPORT === 'on';
const admin = { headers: { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}` } };

// 429 (no key free) is an expected broker answer; provider failures are what we count.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 599 }));

export default function () {
  const drawn = http.get(`${__ENV.BASE_URL}/key?feature=chat`, admin);
  check(drawn, {
    'broker: 200, or 429 with Retry-After': (r) =>
      r.status === 200 || (r.status === 429 && Number(r.headers['Retry-After']) >= 1),
  });
  if (drawn.status !== 200) {
    return;
  }
  const key = drawn.json();
  const answer = http.post(`${__ENV.PROVIDER_URL}/v1/call`, null, {
    headers: { Authorization: `Bearer ${key.value}` },
  });
  providerCalls.add(1);
  if (answer.status === 429) providerLimited.add(1);
  if (answer.status === 401) providerRevoked.add(1);
  if (answer.status >= 500) providerErrors.add(1);
  if (report) {
    const body = { status: answer.status };
    const retryAfter = Number(answer.headers['Retry-After']);
    if (retryAfter >= 0) body.retry_after = retryAfter;
    const reported = http.post(`${__ENV.BASE_URL}/key/${key.key_id}/report`, JSON.stringify(body), {
      headers: { ...admin.headers, 'Content-Type': 'application/json' },
    });
    check(reported, { 'report: 200': (r) => r.status === 200 });
  }
}
