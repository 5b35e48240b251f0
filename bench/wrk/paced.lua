-- Paced load for bench/front_regress.py: another script of this directory (``paced(script)``, as
-- paced_post.lua and paced_get.lua do), each connection pausing after every answer for a random time,
-- uniform in 0..2 x args[1] ms (mean args[1]); the other args go to that script's init. With C
-- connections and a mean pause P the rate is about C x 1000 / (P + latency) requests/s: a moderate
-- load, far below saturation, so that the latencies are the server's, not a queue's. wrk (not
-- wrk2) has no constant-rate mode: a slower server is sent a little less. The pause is random so
-- that the connections do not march in step.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

function paced(script)
   dofile(dir .. script)
   local inner, pause = init, 0
   init = function(args)
      pause = tonumber(args[1])
      math.randomseed(os.time())
      inner({ (table.unpack or unpack)(args, 2) })
   end
   delay = function()
      return math.random() * 2 * pause
   end
end
