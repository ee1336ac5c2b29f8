// Reading the commonest JSON shape without a parser: a flat object whose
// members are all plain strings, written compactly (no whitespace, no escapes),
// e.g. {"description":"buy milk"} — eventsd's own event payloads and most
// request bodies. Anything else is left to a real parser (nlohmann::json).
#pragma once

#include <string_view>

namespace eventsd::core {

/// True for a byte a JSON string holds as it is: not a control character,
/// '"' or '\\' (everything else, UTF-8 included, needs no escape).
constexpr bool json_plain(unsigned char c) {
  return c >= 0x20 && c != '"' && c != '\\';
}

/// Calls `field(key, value)` for each member of `data` and returns true when
/// `data` is a flat object of plain strings; false, possibly after some calls,
/// for anything else. Plain: no backslash and no control character; the bytes
/// are passed on as they are (validating UTF-8 is the caller's business).
template <class F>
bool scan_flat_strings(std::string_view data, F&& field) {
  size_t i = 0;
  auto plain_string = [&](std::string_view& out) {
    if (i >= data.size() || data[i] != '"')
      return false;
    auto start = ++i;
    for (; i < data.size() && data[i] != '"'; ++i)
      if (!json_plain(static_cast<unsigned char>(data[i])))
        return false;
    if (i >= data.size())
      return false;
    out = data.substr(start, i++ - start);
    return true;
  };
  if (data.size() < 2 || data[i++] != '{')
    return false;
  if (data == "{}")
    return true;
  for (;;) {
    std::string_view key, value;
    if (!plain_string(key) || i >= data.size() || data[i++] != ':' || !plain_string(value))
      return false;
    field(key, value);
    if (i >= data.size())
      return false;
    char c = data[i++];
    if (c == '}')
      return i == data.size();
    if (c != ',')
      return false;
  }
}

} // namespace eventsd::core
