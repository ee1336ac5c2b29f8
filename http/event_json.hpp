// JSON views of logged events, shared by the stream routes and SSE.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "storage/event_log.hpp"

namespace eventsd::http {

/// RFC 3339 UTC with milliseconds, e.g. "2026-11-26T07:04:41.123Z".
std::string rfc3339(int64_t unix_ms);

/// `{"id","stream","type","version","position","occurredAt","data"}` (API.md §2).
nlohmann::json event_json(const storage::recorded_event& e);

} // namespace eventsd::http
