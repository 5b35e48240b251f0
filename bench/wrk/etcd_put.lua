-- etcd's put through its v3 JSON gateway: POST /v3/kv/put {"key": base64("users/<i>"), "value":
-- base64(the 150 B document)}, i cycling over args[1] keys (default 100 000), as post.lua does.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
   local out = {}
   for at = 1, #text, 3 do
      local a, b, c = text:byte(at, at + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local chars = 4 - (b and 0 or 1) - (c and 0 or 1)
      for shift = 1, 4 do
         local index = math.floor(n / 2 ^ (6 * (4 - shift))) % 64 + 1
         out[#out + 1] = shift <= chars and ALPHABET:sub(index, index) or "="
      end
   end
   return table.concat(out)
end

local value, keys, i

function init(args)
   keys = tonumber(args[1] or "100000")
   value = base64(document())
   i = -1
end

function request()
   i = (i + 1) % keys
   local body = '{"key":"' .. base64("users/" .. i) .. '","value":"' .. value .. '"}'
   return wrk.format("POST", "/v3/kv/put", json_headers(), body)
end
