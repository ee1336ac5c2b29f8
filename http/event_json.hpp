// JSON views of logged events, shared by the stream routes, the Todo history
// and SSE. Written straight into a string: these are the hottest answers of
// the log routes, and a DOM per event cost a third of their CPU.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "storage/event_log.hpp"

namespace eventsd::http {

/// Appends the instant `unix_ms` as a JSON string in RFC 3339 UTC with
/// milliseconds, e.g. "2026-11-26T07:04:41.123Z" (arithmetic only: no
/// formatting functions, no time-zone lock).
void append_json_time(std::string& out, int64_t unix_ms);

/// Appends `s` as a JSON string (quoted; `"`, `\` and control characters
/// escaped; UTF-8 passed through).
void append_json_string(std::string& out, std::string_view s);

/// Appends `v` as a JSON number.
void append_json_uint(std::string& out, uint64_t v);

/// Appends `{"id","stream","type","version","position","occurredAt","data"}`
/// (API.md §2). `data` is the stored JSON as it is; stored text that is not
/// JSON (never written by eventsd) becomes a JSON string.
void append_event_json(std::string& out, const storage::recorded_event& e);

} // namespace eventsd::http
