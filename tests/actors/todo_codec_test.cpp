// Tests of the JSON codec of Todo events (log payloads) and states (snapshots).
#include "actors/todo_codec.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace eventsd::todo;

namespace {

const std::string e_acute_emoji = "caf\xC3\xA9 \xF0\x9F\x98\x80 \"quoted\" \\ back\nslash";

std::vector<event> every_event() {
  return {created{"buy milk"},
          created{e_acute_emoji},
          description_changed{"new text"},
          description_changed{e_acute_emoji},
          status_changed_to_in_progress{},
          status_changed_to_done{},
          undone_to{"3f2b8c1e-0d4a-4b6c-9e8f-1a2b3c4d5e6f", 1, "first", status::created},
          undone_to{"3f2b8c1e-0d4a-4b6c-9e8f-1a2b3c4d5e6f", 7, e_acute_emoji,
                    status::in_progress},
          undone_to{"e", 18446744073709551615ull, "last", status::done}};
}

} // namespace

TEST_CASE("every event round-trips through encode_data and decode_event", "[codec]") {
  for (auto& e : every_event()) {
    auto name = type_name(e);
    INFO(name);
    auto data = encode_data(e);
    INFO(data);
    auto back = decode_event(name, data);
    REQUIRE(back);
    CHECK(*back == e);
  }
}

TEST_CASE("encoded event data is a JSON object", "[codec]") {
  for (auto& e : every_event()) {
    auto data = encode_data(e);
    INFO(data);
    REQUIRE_FALSE(data.empty());
    CHECK(data.front() == '{');
    CHECK(data.back() == '}');
  }
}

TEST_CASE("encode_data writes exactly what nlohmann's dump writes of the same object, whether "
          "the description takes the direct path (plain ASCII) or not",
          "[codec]") {
  const std::vector<std::string> descriptions{
    "buy milk", "", " ", "~", "a/b", "{\"x\":1}", "tab\there", "del\x7f", "caf\xC3\xA9",
    "back\\slash", std::string(200, 'x'), e_acute_emoji};
  std::vector<event> events{status_changed_to_in_progress{}, status_changed_to_done{}};
  for (const auto& d : descriptions) {
    events.push_back(created{d});
    events.push_back(description_changed{d});
  }
  for (const auto& e : events) {
    auto data = encode_data(e);
    INFO(data);
    auto parsed = nlohmann::json::parse(data);
    CHECK(parsed.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) == data);
    auto back = decode_event(type_name(e), data);
    REQUIRE(back);
    CHECK(*back == e);
  }
  CHECK(encode_data(created{"buy milk"}) == R"({"description":"buy milk","status":"Created"})");
  CHECK(encode_data(status_changed_to_done{}) == R"({"status":"Done"})");
}

TEST_CASE("an unknown event type decodes to nothing", "[codec]") {
  auto data = encode_data(created{"buy milk"});
  CHECK_FALSE(decode_event("deleted", data));
  CHECK_FALSE(decode_event("", data));
  CHECK_FALSE(decode_event("Created", data));
}

TEST_CASE("malformed event data decodes to nothing", "[codec]") {
  CHECK_FALSE(decode_event("created", ""));
  CHECK_FALSE(decode_event("created", "{"));
  CHECK_FALSE(decode_event("created", "not json"));
  CHECK_FALSE(decode_event("created", "[\"description\"]"));
  CHECK_FALSE(decode_event("created", "\"buy milk\""));
  CHECK_FALSE(decode_event("created", "{}"));
  CHECK_FALSE(decode_event("created", "{\"description\": 42}"));
  CHECK_FALSE(decode_event("description-changed", "{\"description\": null}"));
  CHECK_FALSE(decode_event("status-changed-to-done", "["));
  CHECK_FALSE(decode_event("status-changed-to-in-progress", "null"));
  // Undo needs all of eventId, version (unsigned), description and a known status.
  CHECK_FALSE(decode_event("undo-to-some-history-state", "{}"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"version":1,"description":"ab","status":"Done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","description":"ab","status":"Done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","version":-1,"description":"ab","status":"Done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","version":"1","description":"ab","status":"Done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","version":1,"status":"Done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","version":1,"description":"ab","status":"done"})"));
  CHECK_FALSE(decode_event("undo-to-some-history-state",
                           R"({"eventId":"e","version":1,"description":"ab"})"));
}

TEST_CASE("event data in other spellings than encode_data's decodes the same", "[codec]") {
  // The exact shapes encode_data writes are read without a parse; everything
  // else goes through the parser and must give the same events.
  CHECK(decode_event("created", R"({"description":"buy milk","status":"Created"})")
        == event{created{"buy milk"}});
  CHECK(decode_event("created", R"({ "status" : "Created", "description" : "buy milk" })")
        == event{created{"buy milk"}});
  CHECK(decode_event("created", R"({"description":"caf\u00e9 \"x\""})")
        == event{created{"caf\xC3\xA9 \"x\""}});
  CHECK(decode_event("description-changed", R"({"description":"a\\b"})")
        == event{description_changed{"a\\b"}});
  CHECK(decode_event("description-changed", R"({"description":"ab","extra":1})")
        == event{description_changed{"ab"}});
  CHECK(decode_event("status-changed-to-done", R"({"status":"Done"})")
        == event{status_changed_to_done{}});
  CHECK(decode_event("status-changed-to-done", "{}") == event{status_changed_to_done{}});
  CHECK(decode_event("status-changed-to-in-progress", R"({"status": "InProgress"})")
        == event{status_changed_to_in_progress{}});
  // Look-alikes of the fast shapes that are not JSON are still refused.
  CHECK_FALSE(decode_event("description-changed", R"({"description":"a"}"})"));
  CHECK_FALSE(decode_event("description-changed", "{\"description\":\"a\nb\"}"));
  CHECK_FALSE(decode_event("created", R"({"description":"","status":"Created"} x)"));
}

TEST_CASE("a state round-trips through encode_state and decode_state", "[codec]") {
  std::vector<state> states{
    {"0b7c7a5e-6f2d-4d3e-9a51-7f1e6b2c9d00", "buy milk", status::created, 1},
    {"0b7c7a5e-6f2d-4d3e-9a51-7f1e6b2c9d00", e_acute_emoji, status::in_progress, 100},
    {"0b7c7a5e-6f2d-4d3e-9a51-7f1e6b2c9d00", "done", status::done, 18446744073709551615ull},
  };
  for (auto& s : states) {
    auto bytes = encode_state(s);
    INFO(bytes);
    auto back = decode_state(bytes);
    REQUIRE(back);
    CHECK(*back == s);
  }
}

TEST_CASE("malformed state bytes decode to nothing", "[codec]") {
  CHECK_FALSE(decode_state(""));
  CHECK_FALSE(decode_state("{"));
  CHECK_FALSE(decode_state("[]"));
  CHECK_FALSE(decode_state("{}"));
  CHECK_FALSE(decode_state("garbage\x01\x02"));
  CHECK_FALSE(decode_state(R"({"description":"ab","status":"Done","version":1})"));
  CHECK_FALSE(decode_state(R"({"id":"x","status":"Done","version":1})"));
  CHECK_FALSE(decode_state(R"({"id":"x","description":"ab","version":1})"));
  CHECK_FALSE(decode_state(R"({"id":"x","description":"ab","status":"Finished","version":1})"));
  CHECK_FALSE(decode_state(R"({"id":"x","description":"ab","status":"Done"})"));
  CHECK_FALSE(decode_state(R"({"id":"x","description":"ab","status":"Done","version":-3})"));
  CHECK_FALSE(decode_state(R"({"id":"x","description":"ab","status":"Done","version":1.5})"));
  CHECK_FALSE(decode_state(R"({"id":7,"description":"ab","status":"Done","version":1})"));
}
