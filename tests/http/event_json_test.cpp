// http/event_json: the hand-written JSON of the log routes, the Todo history
// and SSE, checked against nlohmann's parser.
#include "http/event_json.hpp"

#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace eventsd;
using nlohmann::json;

namespace {

storage::recorded_event event_with_data(std::string data) {
  return storage::recorded_event{"0192f0c1-4f4e-7a7b-9a51-0d1c2b3a4f5e", "todo-x", "created", 3,
                                 42, 1'764'140'681'123, std::move(data)};
}

} // namespace

TEST_CASE("JSON strings round-trip: quotes, backslashes, control characters, UTF-8",
          "[http][json]") {
  for (std::string s : {std::string{""}, std::string{"plain"}, std::string{"say \"hi\""},
                        std::string{"back\\slash"}, std::string{"tab\tnew\nline\rcr"},
                        std::string{"\b\f"}, std::string{"nul\0byte", 8}, std::string{"\x01\x1f"},
                        std::string{"\x7f delete"}, std::string{"caf\xC3\xA9 \xF0\x9F\x90\xA2"},
                        std::string{"</script>"}}) {
    std::string out;
    http::append_json_string(out, s);
    INFO("input bytes " << s.size() << ", JSON " << out);
    auto parsed = json::parse(out);
    REQUIRE(parsed.is_string());
    CHECK(parsed.get<std::string>() == s);
    CHECK(out.find('\n') == std::string::npos);
  }
}

TEST_CASE("JSON numbers: 0 and the largest uint64", "[http][json]") {
  std::string out;
  http::append_json_uint(out, 0);
  out += ',';
  http::append_json_uint(out, UINT64_MAX);
  CHECK(out == "0,18446744073709551615");
}

TEST_CASE("times are RFC 3339 UTC with milliseconds, as gmtime and strftime write them",
          "[http][json]") {
  // The epoch, a leap day, the last millisecond of a year, a far date, and
  // 100 000 instants spread over 1970..2100.
  std::vector<int64_t> instants{0, 951'782'400'000, 1'767'225'599'999, 4'102'444'800'000,
                                1'764'140'681'007};
  for (int64_t i = 0; i < 100'000; ++i)
    instants.push_back(i * 41'024'137'931 % 4'102'444'800'000);
  for (int64_t ms : instants) {
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char expected[40];
    auto n = std::strftime(expected, sizeof(expected), "\"%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(expected + n, sizeof(expected) - n, ".%03dZ\"", static_cast<int>(ms % 1000));
    std::string out;
    http::append_json_time(out, ms);
    INFO(ms);
    REQUIRE(out == expected);
  }
}

TEST_CASE("an event as JSON has the fields of API.md §2 and its data as a JSON value",
          "[http][json]") {
  std::string out;
  http::append_event_json(out, event_with_data(R"({"description":"Buy \"milk\""})"));
  auto j = json::parse(out);
  CHECK(j["id"] == "0192f0c1-4f4e-7a7b-9a51-0d1c2b3a4f5e");
  CHECK(j["stream"] == "todo-x");
  CHECK(j["type"] == "created");
  CHECK(j["version"] == 3);
  CHECK(j["position"] == 42);
  CHECK(j["occurredAt"] == "2025-11-26T07:04:41.123Z");
  CHECK(j["data"] == json{{"description", "Buy \"milk\""}});
  CHECK(j.size() == 7);
}

TEST_CASE("event data with line breaks is made compact (an SSE data line cannot break)",
          "[http][json]") {
  std::string out;
  http::append_event_json(out, event_with_data("{\n  \"description\": \"two\\nlines\"\n}"));
  CHECK(out.find('\n') == std::string::npos);
  CHECK(json::parse(out)["data"] == json{{"description", "two\nlines"}});
}

TEST_CASE("event data that is not JSON is kept as a JSON string", "[http][json]") {
  std::string out;
  http::append_event_json(out, event_with_data("not json {"));
  CHECK(json::parse(out)["data"] == "not json {");
}
