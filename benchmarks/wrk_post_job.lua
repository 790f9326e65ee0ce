-- wrk script: POST the same body on every request, and print the figures the harness reads as
-- one JSON line (latencies in microseconds). BENCH_PATH and BENCH_BODY choose the endpoint and
-- the body; without them it posts one small bench_job to /jobs.
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/jobs"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or '{"name": "bench_job", "payload": {"key": "bench:http", "total": 0}}'

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
