// Reading the commonest JSON shape without a parser: a flat object whose
// members are all plain strings, written compactly (no whitespace, no escapes),
// e.g. {"description":"buy milk"} — eventsd's own event payloads and most
// request bodies. Anything else is left to a real parser (nlohmann::json).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace eventsd::core {

/// True for a byte a JSON string holds as it is: not a control character,
/// '"' or '\\' (everything else, UTF-8 included, needs no escape).
constexpr bool json_plain(unsigned char c) {
  return c >= 0x20 && c != '"' && c != '\\';
}

/// Length of the longest prefix of `s` whose bytes are all `json_plain`.
/// Eight bytes at a time: with the usual bit tricks, `(x - 0x01…) & ~x & 0x80…`
/// is non-zero exactly when a byte of x is zero (and `x - 0x20…` when one is
/// below 0x20); a word with a hit is finished byte by byte.
inline size_t json_plain_prefix(std::string_view s) {
  constexpr uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    const uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    const uint64_t hits = ((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote)
                          | ((backslash - ones) & ~backslash);
    if (hits & highs)
      break;
  }
  while (i < s.size() && json_plain(static_cast<unsigned char>(s[i])))
    ++i;
  return i;
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
    i += json_plain_prefix(data.substr(i));
    if (i >= data.size() || data[i] != '"')
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
