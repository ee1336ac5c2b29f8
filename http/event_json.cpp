#include "http/event_json.hpp"

#include <charconv>
#include <chrono>

#include <nlohmann/json.hpp>

namespace eventsd::http {

void append_json_time(std::string& out, int64_t unix_ms) {
  using namespace std::chrono;
  const sys_time<milliseconds> t{milliseconds{unix_ms}};
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss hms{t - day};
  auto two = [&](unsigned v) {
    out += static_cast<char>('0' + v / 10);
    out += static_cast<char>('0' + v % 10);
  };
  const int y = static_cast<int>(ymd.year());
  out += '"';
  if (y >= 0 && y <= 9999) {
    two(static_cast<unsigned>(y) / 100);
    two(static_cast<unsigned>(y) % 100);
  } else { // outside RFC 3339; still a readable instant
    out += std::to_string(y);
  }
  out += '-';
  two(static_cast<unsigned>(ymd.month()));
  out += '-';
  two(static_cast<unsigned>(ymd.day()));
  out += 'T';
  two(static_cast<unsigned>(hms.hours().count()));
  out += ':';
  two(static_cast<unsigned>(hms.minutes().count()));
  out += ':';
  two(static_cast<unsigned>(hms.seconds().count()));
  out += '.';
  const auto ms = static_cast<unsigned>(hms.subseconds().count());
  out += static_cast<char>('0' + ms / 100);
  two(ms % 100);
  out += "Z\"";
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  size_t plain = 0; // start of the run of characters copied as they are
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    out.append(s.substr(plain, i - plain));
    plain = i + 1;
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
  out.append(s.substr(plain));
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
