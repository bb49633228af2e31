-- Sends the admin token with every request, whatever the path, so /key and /health carry the
-- same headers. At the end prints one machine-readable line for run.sh.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ADMIN_TOKEN")

function done(summary, latency, requests)
    local seconds = summary.duration / 1e6
    local errors = summary.errors
    io.write(string.format(
        "RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d non2xx=%d socket_errors=%d\n",
        summary.requests / seconds,
        latency:percentile(50) / 1e3,
        latency:percentile(99) / 1e3,
        summary.requests,
        errors.status,
        errors.connect + errors.read + errors.write + errors.timeout))
end
