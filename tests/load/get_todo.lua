-- GET /todo/{id} (the PostgreSQL read model) on the ids of a file, round-robin.
--   wrk -t2 -c64 -d10s -s tests/load/get_todo.lua http://127.0.0.1:PORT -- IDS_FILE [THREADS]
local dir = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
package.path = dir .. "?.lua;" .. package.path
local common = require("wrk_common")

setup = common.setup
done = common.done
common.round_robin(function(id)
  return wrk.format("GET", "/todo/" .. id)
end)
