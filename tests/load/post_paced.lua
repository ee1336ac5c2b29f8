-- POST /todo (the request of post_todo.lua) at a chosen pace: every connection
-- waits DELAY_MS (fractional: rounded up or down at random so the mean is
-- exact) before each request. The rate is then connections × 1000 /
-- (DELAY_MS + latency ms); scripts/bench calibrates DELAY_MS for a target rate.
--   wrk -t2 -c64 -d10s -s tests/load/post_paced.lua http://127.0.0.1:PORT -- DELAY_MS
local dir = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
dofile(dir .. "post_todo.lua") -- wrk.method/path/body/headers, setup, done

local delay_ms = 0

function init(args)
  delay_ms = tonumber(args[1]) or 0
  math.randomseed(os.time() + (thread_no or 0))
end

function delay()
  local whole = math.floor(delay_ms)
  if math.random() < delay_ms - whole then
    whole = whole + 1
  end
  return whole
end
