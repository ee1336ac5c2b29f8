-- Shared by the wrk scripts of tests/load: reading id files, pre-formatting
-- requests, and the one summary line that scripts/bench parses.
--
--   BENCH requests=N duration_s=S rps=R p50_ms=A p90_ms=B p99_ms=C max_ms=D
--         non2xx=E socket_errors=F
--
-- non2xx is wrk's own count of answers with a status of 400 or more (none of
-- the benchmarked routes answers 1xx or 3xx); socket_errors adds connect,
-- read, write and timeout errors. Counting without a response() hook keeps
-- wrk as fast as it can be.
local M = {}

function M.load_ids(path)
  assert(path, "usage: wrk ... -s SCRIPT URL -- IDS_FILE")
  local f = assert(io.open(path, "r"))
  local ids = {}
  for line in f:lines() do
    if #line > 0 then
      ids[#ids + 1] = line
    end
  end
  f:close()
  assert(#ids > 0, "no ids in " .. path)
  return ids
end

-- Gives each wrk thread its number (0, 1, ...), so threads start at
-- different places in an id list.
local next_thread = 0
function M.setup(thread)
  thread:set("thread_no", next_thread)
  next_thread = next_thread + 1
end

-- Requests `fmt(id)` for every id, round-robin; each thread starts at its
-- own offset. Installs wrk's global init() and request().
function M.round_robin(fmt)
  local reqs, idx
  init = function(args)
    local ids = M.load_ids(args[1])
    reqs = {}
    for i, id in ipairs(ids) do
      reqs[i] = fmt(id)
    end
    local threads = tonumber(args[2]) or 2
    idx = math.floor((thread_no or 0) * #reqs / threads)
  end
  request = function()
    idx = idx % #reqs + 1
    return reqs[idx]
  end
end

function M.done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d socket_errors=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end

return M
