-- wrk script of the predict-path bench (Ray Serve and the scheduler's predict
-- URL alike): POSTs a small JSON body (the script's first argument, after the
-- URL, when given) and, when the run ends, prints one line for aibro-bench to parse:
--   WRK requests=N status_errors=S timeouts=T errors=E p50_us=.. p99_us=.. max_us=.. duration_us=..
-- requests counts completed responses (any status, also those slower than
-- --timeout, which wrk counts as timeouts too); status_errors those with a
-- status outside 2xx (counted here per thread: wrk's own count starts at 400);
-- errors is status_errors plus connect, read, write and timeout errors.
-- Latencies (microseconds) cover completed responses within the timeout.

wrk.method = "POST"
wrk.body = '{"text": "hello", "n": 1}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  if args[1] then
    wrk.body = args[1]
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local status = 0
  for _, thread in ipairs(threads) do
    status = status + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d status_errors=%d timeouts=%d errors=%d p50_us=%d p99_us=%d max_us=%d duration_us=%d\n",
    summary.requests, status, e.timeout, e.connect + e.read + e.write + e.timeout + status,
    latency:percentile(50), latency:percentile(99), latency.max, summary.duration))
end
