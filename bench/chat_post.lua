-- wrk script: POST /v1/chat with a bearer key from $SKIPJACK_KEY, spread
-- over $SKIPJACK_USERS users (default 1000), each turn a distinct message.
--   SKIPJACK_KEY=sk_... wrk -t2 -c256 -d30s --latency -s bench/chat_post.lua http://127.0.0.1:8000
local key = os.getenv("SKIPJACK_KEY") or error("set SKIPJACK_KEY")
local users = tonumber(os.getenv("SKIPJACK_USERS") or "1000")
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
   thread:set("thread_id", thread_id)
   thread_id = thread_id + 1
   table.insert(threads, thread)
end

function init(args)
   wrk.method = "POST"
   wrk.path = "/v1/chat"
   wrk.headers["Authorization"] = "Bearer " .. key
   wrk.headers["Content-Type"] = "application/json"
   statuses = {}
end

function request()
   counter = counter + 1
   local user = (counter * 7919 + thread_id) % users
   local body = string.format(
      '{"user_id":"bench-%d","message":"hello %d-%d","priority":%d}',
      user, thread_id, counter, (counter % 3) * 2 + 1)
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local totals = {}
   for _, thread in ipairs(threads) do
      local s = thread:get("statuses")
      for status, n in pairs(s) do
         totals[status] = (totals[status] or 0) + n
      end
   end
   io.write("status counts:")
   for status, n in pairs(totals) do
      io.write(string.format(" %d=%d", status, n))
   end
   io.write("\n")
   io.write(string.format("requests/s: %.0f  p50: %.2f ms  p90: %.2f ms  p99: %.2f ms  max: %.2f ms\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
   io.write(string.format("errors: connect %d, read %d, write %d, timeout %d, status %d\n",
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.timeout, summary.errors.status))
end
