-- Appended to wrk's report: one line of JSON that bench/run.py reads.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_s\": %.6f, \"errors\": %d, " ..
    "\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f}\n",
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
