-- The 2-key transfer of txn.lua through etcd's v3 JSON gateway: POST /v3/kv/txn comparing the version
-- of guard/<a> and guard/<b> with 0 (they never exist: both compares hold) and putting accounts/<a>
-- and accounts/<b> (a ~= b, random among args[1] accounts, default 100). Keys and values are base64.
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

local accounts, headers

function init(args)
   accounts = tonumber(args[1] or "100")
   headers = json_headers()
   math.randomseed(os.time())
end

local function compare(i)
   return string.format('{"key":"%s","target":"VERSION","result":"EQUAL","version":"0"}',
                        base64("guard/" .. i))
end

local function put(i)
   return string.format('{"request_put":{"key":"%s","value":"%s"}}', base64("accounts/" .. i),
                        base64(string.format('{"balance":%d}', math.random(0, 2000))))
end

function request()
   local a = math.random(0, accounts - 1)
   local b = (a + math.random(1, accounts - 1)) % accounts
   local body = '{"compare":[' .. compare(a) .. ',' .. compare(b) .. '],"success":[' .. put(a) .. ',' ..
      put(b) .. ']}'
   return wrk.format("POST", "/v3/kv/txn", headers, body)
end
