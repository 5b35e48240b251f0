-- bench/wrk/pipeline_post.lua without a response() callback, for bench/redis_nodes.py: wrk hands no
-- response to Lua (which builds a table of its headers and a string of its body each time), so the
-- generator spends a few microseconds per write instead of tens, which on a 2-core machine are taken
-- from the nodes it measures. wrk still counts a status >= 400 ("Non-2xx or 3xx responses", which
-- redis_nodes.py refuses); no WRK_RESULT line. Args as pipeline_post.lua: keys (default 100 000),
-- depth (default 16; 1 is one POST at a time).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "pipeline_post.lua")
response = nil
done = nil
