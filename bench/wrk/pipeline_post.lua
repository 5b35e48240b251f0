-- Pipelined POSTs: each write of a connection carries args[2] (default 16) requests, POSTs of the 150 B
-- document to /users/<i>, and the next goes once all their responses are in (wrk counts each response).
-- As in wrk's scripts/pipeline.lua the pipelined strings are built in init(): a ring of them covering
-- args[1] keys (default 100 000), so the keys cycle as in post.lua.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local ring, n

function init(args)
   local keys, depth = tonumber(args[1] or "100000"), tonumber(args[2] or "16")
   local head, tail = template("POST", "/users/KEY", document())
   head = head .. "/users/"
   ring, n = {}, 0
   for first = 0, keys - depth, depth do
      local batch = {}
      for k = first, first + depth - 1 do
         batch[#batch + 1] = head .. k .. tail
      end
      ring[#ring + 1] = table.concat(batch)
   end
end

function request()
   n = n % #ring + 1
   return ring[n]
end
