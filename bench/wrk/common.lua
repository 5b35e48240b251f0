-- Shared by the wrk scripts of bench/http_front.py: checks every response and prints one result line.
--
-- A response with a status outside 2xx is counted (wrk itself counts only >= 400 as errors), per
-- status, in each thread; done() gathers the threads' counts (setup() keeps the thread handles: setup
-- and done share one Lua state) and prints, after wrk's own report, one line
--   WRK_RESULT {"requests":N,"duration_us":N,"p50_us":N,"p99_us":N,...,"non2xx":N,"statuses":{...}}
-- that bench/http_front.py parses. Defining response() makes wrk hand each response to Lua, which costs
-- the generator a little per request: http_front.py reports the generator's CPU to show it has room.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

non2xx = 0
statuses = {}

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      statuses[status] = (statuses[status] or 0) + 1
   end
end

-- The document every write sends: 150 bytes of JSON (a typical small record).
function document()
   local head = '{"name":"Ada Lovelace","email":"ada@example.com","age":36,"tags":["math","engines"],' ..
      '"active":true,"note":"'
   local doc = head .. string.rep("x", 150 - #head - 2) .. '"}'
   assert(#doc == 150)
   return doc
end

-- wrk's headers (Host, any -H) and a JSON Content-Type: wrk.format() handed a table of headers uses
-- only that table, so a POST built with its own Content-Type would go without a Host header.
function json_headers()
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Content-Type"] = "application/json"
   return headers
end

-- The request wrk.format() builds for ``method path body``, split around ``path`` so that a script can
-- put a varying path in between without rebuilding the headers each time.
function template(method, path, body)
   local request = wrk.format(method, path, json_headers(), body)
   local at = request:find(path, 1, true)
   return request:sub(1, at - 1), request:sub(at + #path)
end

function done(summary, latency, requests)
   local bad, seen = 0, {}
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      for status, count in pairs(thread:get("statuses") or {}) do
         seen[status] = (seen[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(seen) do
      table.insert(parts, string.format('"%d":%d', status, count))
   end
   -- latency:percentile() is 0 when wrk's coordinated-omission correction put samples below the
   -- recorded minimum (its walk starts there): long pipelined batches under load. 0 reads as n/a.
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"non2xx":%d,"statuses":{%s}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout, bad, table.concat(parts, ",")))
end
