-- POST of a 150 B JSON document to /users/<i>, i cycling over args[1] keys (default 100 000).
--
-- wrk's Lua state is per thread, not per connection: http_front.py runs one wrk thread, so the counter
-- runs over every connection's requests in turn and consecutive requests (on different connections)
-- write different keys.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local head, tail, keys, i

function init(args)
   keys = tonumber(args[1] or "100000")
   head, tail = template("POST", "/users/KEY", document())
   head = head .. "/users/"
   i = -1
end

function request()
   i = (i + 1) % keys
   return head .. i .. tail
end
