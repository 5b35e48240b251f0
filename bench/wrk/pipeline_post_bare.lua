-- Pipelined POSTs for bench/redis_nodes.py, made to cost wrk as little as possible: on a 2-core machine
-- every microsecond of the generator is taken from the nodes it measures. Each write of a connection
-- carries args[2] (default 16; 1 is one POST at a time) POSTs of the 150 B document to /users/<i>, i
-- cycling over args[1] keys (default 100 000), and the next goes once all their responses are in.
-- Unlike pipeline_post.lua (bench/http_front.py) there is no response() callback, for which wrk would
-- build a Lua table of each response's headers and a string of its body, and no ring of every batch
-- built in init() (100 000 strings: a few hundred ms of wrk's CPU at start, tens of microseconds per
-- write in a 2-second run); a batch is built when it is sent. wrk itself still counts a status >= 400
-- ("Non-2xx or 3xx responses", which redis_nodes.py refuses).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
response = nil
done = nil

local head, tail, keys, depth, i, batch

function init(args)
   keys, depth = tonumber(args[1] or "100000"), tonumber(args[2] or "16")
   head, tail = template("POST", "/users/KEY", document())
   head = head .. "/users/"
   i, batch = -1, {}
end

function request()
   for k = 1, depth do
      i = (i + 1) % keys
      batch[k] = head .. i .. tail
   end
   return table.concat(batch)
end
