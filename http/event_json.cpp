#include "http/event_json.hpp"

#include <cstdio>
#include <ctime>

namespace eventsd::http {

std::string rfc3339(int64_t unix_ms) {
  std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

nlohmann::json event_json(const storage::recorded_event& e) {
  auto data = nlohmann::json::parse(e.data, nullptr, false);
  if (data.is_discarded())
    data = e.data; // never happens for events eventsd wrote; keep the text
  return {{"id", e.id},
          {"stream", e.stream},
          {"type", e.type},
          {"version", e.version},
          {"position", e.position},
          {"occurredAt", rfc3339(e.occurred_at_ms)},
          {"data", std::move(data)}};
}

} // namespace eventsd::http
