-- A 2-key transfer as one ooo transaction: POST /?api=txn setting accounts/<a> and accounts/<b> (a ~= b,
-- random among args[1] accounts, default 100) with new balances, expecting guard/<a> and guard/<b>
-- not to exist (two compares that hold: guards are never written), as etcd_txn.lua does with etcd.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local accounts, headers

function init(args)
   accounts = tonumber(args[1] or "100")
   headers = json_headers()
   math.randomseed(os.time())
end

function request()
   local a = math.random(0, accounts - 1)
   local b = (a + math.random(1, accounts - 1)) % accounts
   local body = string.format(
      '{"expect":{"guard/%d":null,"guard/%d":null},"ops":[' ..
      '{"op":"set","key":"accounts/%d","data":{"balance":%d}},' ..
      '{"op":"set","key":"accounts/%d","data":{"balance":%d}}]}',
      a, b, a, math.random(0, 2000), b, math.random(0, 2000))
   return wrk.format("POST", "/?api=txn", headers, body)
end
