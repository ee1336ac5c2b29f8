// Tests of core/flat_json.hpp: which bytes a JSON string holds as they are, found eight
// at a time, and the flat-object scanner built on it.
#include "core/flat_json.hpp"

#include <catch2/catch.hpp>

#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

using eventsd::core::json_plain;
using eventsd::core::json_plain_prefix;
using eventsd::core::scan_flat_strings;

namespace {

/// The definition, one byte at a time.
size_t plain_prefix_bytewise(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && json_plain(static_cast<unsigned char>(s[i])))
    ++i;
  return i;
}

using members = std::vector<std::pair<std::string, std::string>>;

/// The members scan_flat_strings reports, or nullopt when it refuses `data`.
std::optional<members> scan(std::string_view data) {
  members out;
  if (!scan_flat_strings(data, [&](std::string_view k, std::string_view v) {
        out.emplace_back(std::string{k}, std::string{v});
      }))
    return std::nullopt;
  return out;
}

} // namespace

TEST_CASE("json_plain accepts every byte but control characters, quote and backslash",
          "[flat_json]") {
  for (int c = 0; c < 256; ++c)
    CHECK(json_plain(static_cast<unsigned char>(c)) == (c >= 0x20 && c != '"' && c != '\\'));
}

TEST_CASE("json_plain_prefix stops at the first byte to escape, wherever it is in a word",
          "[flat_json]") {
  // Every byte value at every position of strings of 0..20 bytes, around it plain
  // ASCII or UTF-8 (high bit set, which the word tricks must not take for a hit).
  for (char filler : {'a', '\xC3', '\x7F', ' '})
    for (size_t len = 0; len <= 20; ++len)
      for (size_t at = 0; at < len; ++at)
        for (int c = 0; c < 256; ++c) {
          std::string s(len, filler);
          s[at] = static_cast<char>(c);
          INFO("filler " << int(static_cast<unsigned char>(filler)) << ", length " << len
                         << ", byte " << c << " at " << at);
          REQUIRE(json_plain_prefix(s) == plain_prefix_bytewise(s));
        }
  CHECK(json_plain_prefix("") == 0);
  CHECK(json_plain_prefix("0123456789abcdef") == 16);
  CHECK(json_plain_prefix("0123456789abcde\"") == 15);
  CHECK(json_plain_prefix("01234567\n") == 8);
}

TEST_CASE("json_plain_prefix agrees with the definition on random strings", "[flat_json]") {
  std::mt19937 rng{7};
  // Mostly plain bytes, now and then one to escape.
  std::uniform_int_distribution<int> byte{0, 255}, rare{0, 40};
  for (int n = 0; n < 20'000; ++n) {
    std::string s(static_cast<size_t>(rng() % 70), 'x');
    for (auto& ch : s)
      ch = static_cast<char>(rare(rng) == 0 ? byte(rng) : 0x20 + byte(rng) % 0x60);
    REQUIRE(json_plain_prefix(s) == plain_prefix_bytewise(s));
  }
}

TEST_CASE("scan_flat_strings reads compact flat objects of plain strings", "[flat_json]") {
  CHECK(scan(R"({"description":"buy milk"})") == members{{"description", "buy milk"}});
  CHECK(scan(R"({"a":"1","bb":"a longer value of more than eight bytes"})")
        == members{{"a", "1"}, {"bb", "a longer value of more than eight bytes"}});
  CHECK(scan("{}") == members{});
  CHECK(scan(R"({"k":""})") == members{{"k", ""}});
  CHECK(scan("{\"name\":\"Ünïcödé ✓\"}") == members{{"name", "Ünïcödé ✓"}});
}

TEST_CASE("scan_flat_strings refuses what needs a real parser", "[flat_json]") {
  CHECK_FALSE(scan(R"({"description":"say \"hi\" to everyone"})")); // escape
  CHECK_FALSE(scan("{\"description\":\"two\nlines of text\"}"));     // control character
  CHECK_FALSE(scan(R"({"description": "spaced"})"));
  CHECK_FALSE(scan(R"({"n":1})"));
  CHECK_FALSE(scan(R"({"description":"unterminated long value)"));
  CHECK_FALSE(scan(R"({"a":"1"} )"));
  CHECK_FALSE(scan(R"({"a":"1",})"));
  CHECK_FALSE(scan(R"(["a"])"));
  CHECK_FALSE(scan(""));
}
