-- get.lua, paced (paced.lua): args[1] the mean pause in ms, args[2] the path.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "paced.lua")
paced("get.lua")
