#include "http/event_json.hpp"

#include <charconv>
#include <chrono>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/flat_json.hpp"

namespace eventsd::http {

void append_json_time(std::string& out, int64_t unix_ms) {
  using namespace std::chrono;
  const sys_time<milliseconds> t{milliseconds{unix_ms}};
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss hms{t - day};
  char buf[] = "\"0000-00-00T00:00:00.000Z\"";
  auto put = [&](size_t at, unsigned v, int digits) {
    for (int i = digits - 1; i >= 0; --i, v /= 10)
      buf[at + static_cast<size_t>(i)] = static_cast<char>('0' + v % 10);
  };
  put(6, static_cast<unsigned>(ymd.month()), 2);
  put(9, static_cast<unsigned>(ymd.day()), 2);
  put(12, static_cast<unsigned>(hms.hours().count()), 2);
  put(15, static_cast<unsigned>(hms.minutes().count()), 2);
  put(18, static_cast<unsigned>(hms.seconds().count()), 2);
  put(21, static_cast<unsigned>(hms.subseconds().count()), 3);
  const int y = static_cast<int>(ymd.year());
  if (y < 0 || y > 9999) { // outside RFC 3339; still a readable instant
    out += '"';
    out += std::to_string(y);
    out.append(buf + 5, sizeof(buf) - 6);
    return;
  }
  put(1, static_cast<unsigned>(y), 4);
  out.append(buf, sizeof(buf) - 1);
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  size_t i = core::json_plain_prefix(s);
  if (i == s.size()) { // the usual case: nothing to escape, one copy
    const size_t at = out.size();
    out.resize(at + s.size() + 2);
    char* p = out.data() + at;
    p[0] = '"';
    std::memcpy(p + 1, s.data(), s.size());
    p[s.size() + 1] = '"';
    return;
  }
  out += '"';
  size_t run = 0; // start of the run of characters copied as they are
  for (; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (core::json_plain(c))
      continue;
    out.append(s.substr(run, i - run));
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 0xf];
    }
  }
  out.append(s.substr(run));
  out += '"';
}

void append_json_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, end);
}

void append_event_json(std::string& out, const storage::recorded_event& e) {
  out += "{\"id\":";
  append_json_string(out, e.id);
  out += ",\"stream\":";
  append_json_string(out, e.stream);
  out += ",\"type\":";
  append_json_string(out, e.type);
  out += ",\"version\":";
  append_json_uint(out, e.version);
  out += ",\"position\":";
  append_json_uint(out, e.position);
  out += ",\"occurredAt\":";
  append_json_time(out, e.occurred_at_ms);
  out += ",\"data\":";
  // eventsd stores compact JSON: copied as it is. Anything else is made
  // compact (an SSE data line must not break) or, if not JSON, kept as text.
  if (e.data.find_first_of("\r\n") == std::string::npos && nlohmann::json::accept(e.data)) {
    out += e.data;
  } else if (auto j = nlohmann::json::parse(e.data, nullptr, false); !j.is_discarded()) {
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    append_json_string(out, e.data);
  }
  out += '}';
}

} // namespace eventsd::http
