-- POST /todo with a small valid body; every request creates a new todo.
--   wrk -t2 -c64 -d10s -s tests/load/post_todo.lua http://127.0.0.1:PORT
local dir = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
package.path = dir .. "?.lua;" .. package.path
local common = require("wrk_common")

wrk.method = "POST"
wrk.path = "/todo"
wrk.body = '{"description":"benchmark todo"}'
wrk.headers["Content-Type"] = "application/json"

setup = common.setup
done = common.done
