// Tests of the pure Todo model: decide, evolve and description validation.
#include "actors/todo.hpp"

#include <string>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

using namespace eventsd::todo;

namespace {

const std::string todo_id = "0b7c7a5e-6f2d-4d3e-9a51-7f1e6b2c9d00";
const std::string other_id = "5d0c2f1a-3b4e-4c5d-8e6f-708192a3b4c5";

/// A todo that exists, in `s`, at version `v`.
state existing(status s = status::created, uint64_t v = 1, std::string description = "write tests") {
  return state{todo_id, std::move(description), s, v};
}

/// A todo that does not exist yet.
state missing() {
  return state{todo_id, "", status::created, 0};
}

event accepted(const decision& d) {
  if (auto r = std::get_if<rejection>(&d))
    FAIL("rejected: " << to_string(r->code) << " " << r->field << " " << r->message);
  return std::get<event>(d);
}

rejection refused(const decision& d) {
  if (std::holds_alternative<event>(d))
    FAIL("accepted: " << type_name(std::get<event>(d)));
  return std::get<rejection>(d);
}

const std::vector<status> all_statuses{status::created, status::in_progress, status::done};

/// `n` copies of the code point encoded as `utf8`.
std::string repeat(const std::string& utf8, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i)
    out += utf8;
  return out;
}

} // namespace

// -- create --------------------------------------------------------------------

TEST_CASE("create on a new todo yields created with the description", "[todo][decide]") {
  auto e = accepted(decide(missing(), create{"buy milk"}));
  CHECK(e == event{created{"buy milk"}});
}

TEST_CASE("create on an existing todo is refused as already_exists, from every status",
          "[todo][decide]") {
  for (auto s : all_statuses) {
    auto r = refused(decide(existing(s), create{"buy milk"}));
    CHECK(r.code == todo_errc::already_exists);
  }
}

TEST_CASE("create with an invalid description is refused on the description field",
          "[todo][decide]") {
  auto r = refused(decide(missing(), create{"x"}));
  CHECK(r.code == todo_errc::invalid_description);
  CHECK(r.field == "description");
}

// -- change description ---------------------------------------------------------

TEST_CASE("change description is accepted from every status", "[todo][decide]") {
  for (auto s : all_statuses) {
    auto e = accepted(decide(existing(s), change_description{"new text"}));
    CHECK(e == event{description_changed{"new text"}});
  }
}

TEST_CASE("change description with an invalid description is refused", "[todo][decide]") {
  auto r = refused(decide(existing(), change_description{std::string(256, 'a')}));
  CHECK(r.code == todo_errc::invalid_description);
  CHECK(r.field == "description");
}

// -- status changes ---------------------------------------------------------------

TEST_CASE("put in progress is accepted from every status", "[todo][decide]") {
  for (auto s : all_statuses) {
    INFO("from " << to_string(s));
    auto e = accepted(decide(existing(s), put_in_progress{}));
    CHECK(e == event{status_changed_to_in_progress{}});
    CHECK(evolve(existing(s), e).status == status::in_progress);
  }
}

TEST_CASE("done is accepted from every status", "[todo][decide]") {
  for (auto s : all_statuses) {
    INFO("from " << to_string(s));
    auto e = accepted(decide(existing(s), mark_done{}));
    CHECK(e == event{status_changed_to_done{}});
    CHECK(evolve(existing(s), e).status == status::done);
  }
}

TEST_CASE("done twice appends a second done event", "[todo][decide]") {
  auto st = existing();
  st = evolve(st, accepted(decide(st, mark_done{})));
  st = evolve(st, accepted(decide(st, mark_done{})));
  CHECK(st.status == status::done);
  CHECK(st.version == 3);
}

TEST_CASE("a done todo can go back to in progress", "[todo][decide]") {
  auto st = existing(status::done, 4);
  auto e = accepted(decide(st, put_in_progress{}));
  st = evolve(st, e);
  CHECK(st.status == status::in_progress);
  CHECK(st.version == 5);
}

// -- not found ---------------------------------------------------------------------

TEST_CASE("every non-create command on a missing todo is refused as not_found",
          "[todo][decide]") {
  auto target = existing();
  std::vector<command> commands{change_description{"new text"}, put_in_progress{},
                                mark_done{}, undo_to{"ev-1", target}};
  for (auto& c : commands) {
    INFO("command index " << c.index());
    auto r = refused(decide(missing(), c));
    CHECK(r.code == todo_errc::not_found);
  }
}

TEST_CASE("not_found wins over an invalid description on a missing todo", "[todo][decide]") {
  auto r = refused(decide(missing(), change_description{"x"}));
  CHECK(r.code == todo_errc::not_found);
}

// -- undo --------------------------------------------------------------------------

TEST_CASE("undo to a past state of the same todo restores its description and status",
          "[todo][decide][undo]") {
  auto v1 = evolve(missing(), created{"first"});
  auto v2 = evolve(v1, status_changed_to_in_progress{});
  auto v3 = evolve(v2, description_changed{"second"});
  auto v4 = evolve(v3, status_changed_to_done{});
  REQUIRE(v4 == state{todo_id, "second", status::done, 4});

  auto e = accepted(decide(v4, undo_to{"event-of-v2", v2}));
  CHECK(e == event{undone_to{"event-of-v2", 2, "first", status::in_progress}});
  auto v5 = evolve(v4, e);
  CHECK(v5 == state{todo_id, "first", status::in_progress, 5});

  // Undo to the very first event restores status Created.
  auto back = evolve(v5, accepted(decide(v5, undo_to{"event-of-v1", v1})));
  CHECK(back == state{todo_id, "first", status::created, 6});
}

TEST_CASE("undo to the current version is accepted and appends an event",
          "[todo][decide][undo]") {
  auto st = existing(status::in_progress, 3, "same");
  auto e = accepted(decide(st, undo_to{"event-of-v3", st}));
  auto after = evolve(st, e);
  CHECK(after.version == 4);
  CHECK(after.description == "same");
  CHECK(after.status == status::in_progress);
}

TEST_CASE("undo to a state of another todo is refused as unknown_event",
          "[todo][decide][undo]") {
  auto foreign = state{other_id, "elsewhere", status::done, 1};
  auto r = refused(decide(existing(status::created, 3), undo_to{"foreign-event", foreign}));
  CHECK(r.code == todo_errc::unknown_event);
}

TEST_CASE("undo to a future version of the same todo is refused as unknown_event",
          "[todo][decide][undo]") {
  auto future = existing(status::done, 4, "later");
  auto r = refused(decide(existing(status::created, 3), undo_to{"future-event", future}));
  CHECK(r.code == todo_errc::unknown_event);
}

TEST_CASE("undo to a target that does not exist is refused as unknown_event",
          "[todo][decide][undo]") {
  auto r = refused(decide(existing(status::created, 3), undo_to{"nothing", missing()}));
  CHECK(r.code == todo_errc::unknown_event);
}

// -- evolve ------------------------------------------------------------------------

TEST_CASE("evolve increments the version by one for every event", "[todo][evolve]") {
  std::vector<event> events{created{"first"},
                            description_changed{"second"},
                            status_changed_to_in_progress{},
                            status_changed_to_done{},
                            undone_to{"e1", 1, "first", status::created}};
  auto st = missing();
  uint64_t expected = 0;
  for (auto& e : events) {
    INFO(type_name(e));
    st = evolve(st, e);
    CHECK(st.version == ++expected);
  }
  CHECK(st == state{todo_id, "first", status::created, 5});
}

TEST_CASE("evolve of created sets description and status Created", "[todo][evolve]") {
  auto st = evolve(missing(), created{"buy milk"});
  CHECK(st.exists());
  CHECK(st.description == "buy milk");
  CHECK(st.status == status::created);
  CHECK(st.version == 1);
}

TEST_CASE("evolve of description_changed keeps the status", "[todo][evolve]") {
  auto st = evolve(existing(status::done, 2), description_changed{"changed"});
  CHECK(st == state{todo_id, "changed", status::done, 3});
}

// -- description validation --------------------------------------------------------

TEST_CASE("descriptions of 1 and 256 code points are rejected", "[todo][validation]") {
  CHECK(validate_description("a"));
  CHECK(validate_description(std::string(256, 'a')));
  CHECK(validate_description(""));
  auto r = validate_description("a");
  REQUIRE(r);
  CHECK(r->code == todo_errc::invalid_description);
  CHECK(r->field == "description");
}

TEST_CASE("descriptions of 2 and 255 code points are accepted", "[todo][validation]") {
  CHECK_FALSE(validate_description("ab"));
  CHECK_FALSE(validate_description(std::string(255, 'a')));
}

TEST_CASE("descriptions are not trimmed: spaces count as code points", "[todo][validation]") {
  CHECK_FALSE(validate_description("  "));
  CHECK(validate_description(" "));
  CHECK(validate_description(std::string(256, ' ')));
}

TEST_CASE("multibyte characters count as one code point each", "[todo][validation]") {
  const std::string e_acute = "\xC3\xA9";         // é, 2 bytes
  const std::string euro = "\xE2\x82\xAC";        // €, 3 bytes
  const std::string emoji = "\xF0\x9F\x98\x80";   // 😀, 4 bytes
  CHECK(count_code_points(e_acute) == 1u);
  CHECK(count_code_points(euro) == 1u);
  CHECK(count_code_points(emoji) == 1u);
  CHECK(count_code_points("a" + e_acute + euro + emoji) == 4u);
  CHECK(count_code_points("") == 0u);
  CHECK(count_code_points("\xF4\x8F\xBF\xBF") == 1u); // U+10FFFF, the last code point

  for (auto& c : {e_acute, euro, emoji}) {
    INFO("bytes per code point " << c.size());
    CHECK(validate_description(c));                   // 1 code point
    CHECK_FALSE(validate_description(repeat(c, 2)));  // 2
    CHECK_FALSE(validate_description(repeat(c, 255))); // 255, more than 255 bytes
    CHECK(validate_description(repeat(c, 256)));      // 256
  }
}

TEST_CASE("invalid UTF-8 is rejected", "[todo][validation]") {
  const std::vector<std::pair<const char*, std::string>> invalid{
    {"overlong 2-byte slash", "\xC0\xAF"},
    {"overlong 2-byte NUL", "\xC0\x80"},
    {"overlong 3-byte", "\xE0\x80\xAF"},
    {"overlong 4-byte", "\xF0\x80\x80\xAF"},
    {"high surrogate", "\xED\xA0\x80"},
    {"low surrogate", "\xED\xBF\xBF"},
    {"past U+10FFFF", "\xF4\x90\x80\x80"},
    {"truncated 2-byte", "ab\xC3"},
    {"truncated 3-byte", "ab\xE2\x82"},
    {"truncated 4-byte", "ab\xF0\x9F\x98"},
    {"lone continuation byte", "ab\x80"},
    {"continuation missing mid-string", "a\xC3z"},
    {"0xFF byte", "ab\xFF"},
    {"0xF8 lead byte", "\xF8\x88\x80\x80\x80"},
    {"0xF5 lead byte (past U+10FFFF)", "\xF5\x80\x80\x80"},
    {"0xC1 overlong lead byte", "\xC1\xBF"},
  };
  for (auto& [what, bytes] : invalid) {
    INFO(what);
    CHECK_FALSE(count_code_points(bytes));
    auto r = validate_description("valid prefix " + bytes);
    REQUIRE(r);
    CHECK(r->code == todo_errc::invalid_description);
    CHECK(r->field == "description");
  }
}

TEST_CASE("a description containing U+0000 is rejected", "[todo][validation]") {
  using namespace std::string_literals;
  auto with_nul = "ab\0cd"s;
  REQUIRE(with_nul.size() == 5);
  auto r = validate_description(with_nul);
  REQUIRE(r);
  CHECK(r->code == todo_errc::invalid_description);
  CHECK(refused(decide(missing(), create{with_nul})).code == todo_errc::invalid_description);
}

// -- names -------------------------------------------------------------------------

TEST_CASE("status names round-trip through to_string and parse_status", "[todo][names]") {
  CHECK(to_string(status::created) == "Created");
  CHECK(to_string(status::in_progress) == "InProgress");
  CHECK(to_string(status::done) == "Done");
  for (auto s : all_statuses)
    CHECK(parse_status(to_string(s)) == s);
  CHECK_FALSE(parse_status("done"));
  CHECK_FALSE(parse_status("In Progress"));
  CHECK_FALSE(parse_status(""));
}

TEST_CASE("each event has its API type name", "[todo][names]") {
  CHECK(type_name(created{"x"}) == "created");
  CHECK(type_name(description_changed{"x"}) == "description-changed");
  CHECK(type_name(status_changed_to_in_progress{}) == "status-changed-to-in-progress");
  CHECK(type_name(status_changed_to_done{}) == "status-changed-to-done");
  CHECK(type_name(undone_to{}) == "undo-to-some-history-state");
}

TEST_CASE("each error code has a stable name", "[todo][names]") {
  CHECK(std::string{to_string(todo_errc::invalid_description)} == "invalid_description");
  CHECK(std::string{to_string(todo_errc::not_found)} == "not_found");
  CHECK(std::string{to_string(todo_errc::already_exists)} == "already_exists");
  CHECK(std::string{to_string(todo_errc::unknown_event)} == "unknown_event");
}
