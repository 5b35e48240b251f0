-- GET of one path, args[1] (a single key, or a glob like /list/*): the same request every time.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
   wrk.path = args[1] or wrk.path
end
