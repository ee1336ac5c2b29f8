// End-to-end tests of the Todo HTTP API (API.md §1, §4, §6) against the real
// eventsd binary and PostgreSQL. One server (eventual mode, its own database)
// is shared by every test case of this file; each test works on todos it
// creates itself, and checks `$all` around every rejected write.
#include "e2e/harness.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <set>
#include <thread>

#include <sys/socket.h>
#include <sys/time.h>

using namespace eventsd::e2e;
using namespace std::chrono_literals;

namespace {

// shared_server() (harness): the server of this file, started by the first
// test that needs it.

http_client& client() {
  static http_client c{shared_server().port()};
  return c;
}

/// Position of the last event in `$all`; remembered to page from it next time.
uint64_t head() {
  static uint64_t hint = 1;
  auto h = all_head(client(), hint);
  hint = std::max<uint64_t>(h, 1);
  return h;
}

/// Checks that `r` is an RFC 9457 problem with `status`.
/// `data` as a chunked body: one chunk, then the last (empty) one.
std::string one_chunk(const std::string& data) {
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
  return size_line + data + "\r\n0\r\n\r\n";
}

void check_problem(const response& r, unsigned status) {
  INFO("answer " << r.status << ": " << r.body);
  CHECK(r.status == status);
  CHECK(r.header("Content-Type") == std::optional<std::string>{"application/problem+json; charset=utf-8"});
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j.contains("type"));
  CHECK(j.value("type", json{}).is_string());
  CHECK_FALSE(j.value("type", std::string{}).empty());
  CHECK(j.value("title", json{}).is_string());
  CHECK_FALSE(j.value("title", std::string{}).empty());
  CHECK(j.value("status", json{}).is_number_integer());
  CHECK(j.value("status", 0u) == status);
  CHECK(j.value("detail", json{}).is_string());
  CHECK_FALSE(j.value("detail", std::string{}).empty());
}

/// Checks that problem `r` has `errors` naming `field` with at least one message.
void check_field_error(const response& r, const std::string& field) {
  INFO("answer " << r.status << ": " << r.body);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("errors"));
  REQUIRE(j["errors"].is_array());
  bool found = false;
  for (auto& e : j["errors"])
    if (e.is_object() && e.value("field", std::string{}) == field) {
      found = true;
      REQUIRE(e.contains("messages"));
      REQUIRE(e["messages"].is_array());
      CHECK_FALSE(e["messages"].empty());
      for (auto& m : e["messages"])
        CHECK(m.is_string());
    }
  CHECK(found);
}

/// Checks that `r` is a problem with `status` and that `$all` still ends at `before`.
void check_rejected(const response& r, unsigned status, uint64_t before) {
  check_problem(r, status);
  CHECK(head() == before);
}

/// Checks a write answer: `status`, JSON `{id, version, position}` and `ETag: "<version>"`.
write_ack check_write(const response& r, unsigned status) {
  INFO("answer " << r.status << ": " << r.body);
  REQUIRE(r.status == status);
  CHECK(r.header("Content-Type") == std::optional<std::string>{"application/json; charset=utf-8"});
  auto ack = ack_of(r);
  CHECK(is_canonical_uuid(ack.id));
  CHECK(r.header("ETag") == etag_of(ack.version));
  auto j = r.json_body();
  CHECK(j.size() == 3);
  return ack;
}

write_ack create(const std::string& description, const header_list& headers = {}) {
  return check_write(client().post_json("/todo", {{"description", description}}, headers), 201);
}

write_ack change_description(const std::string& id, const std::string& description,
                             const header_list& headers = {}) {
  return check_write(
    client().put_json("/todo/change-description", {{"id", id}, {"description", description}},
                      headers),
    200);
}

write_ack put_in_progress(const std::string& id, const header_list& headers = {}) {
  return check_write(client().put("/todo/" + id + "/put-in-progress", headers), 200);
}

write_ack done(const std::string& id, const header_list& headers = {}) {
  return check_write(client().put("/todo/" + id + "/done", headers), 200);
}

write_ack undo_to(const std::string& id, const std::string& event_id,
                  const header_list& headers = {}) {
  return check_write(client().put("/todo/" + id + "/undo-to/" + event_id, headers), 200);
}

/// The history items of todo `id` (REQUIRE 200).
json history(const std::string& id) {
  auto r = client().get("/todo/" + id + "/history");
  INFO("history answer " << r.status << ": " << r.body);
  REQUIRE(r.status == 200);
  auto j = r.json_body();
  REQUIRE(j.contains("items"));
  REQUIRE(j["items"].is_array());
  return j["items"];
}

/// Todo `id` from the read model once it has applied `position` (REQUIRE 200).
json read_todo(const std::string& id, uint64_t position) {
  auto r = client().get("/todo/" + id + "?minPosition=" + std::to_string(position));
  INFO("GET /todo/" << id << " answer " << r.status << ": " << r.body);
  REQUIRE(r.status == 200);
  auto p = r.header("X-Read-Model-Position");
  REQUIRE(p);
  CHECK(std::stoull(*p) >= position);
  return r.json_body();
}

json todo_state(const std::string& id, const std::string& description, const std::string& status,
                uint64_t version) {
  return {{"id", id}, {"description", description}, {"status", status}, {"version", version}};
}

/// Every item of GET /todo<query>, following `next` (each page ≤ `limit`).
std::vector<json> list_all(const std::string& query, size_t limit) {
  std::vector<json> out;
  std::string after;
  for (int pages = 0; pages < 10000; ++pages) {
    auto target = "/todo?limit=" + std::to_string(limit) + query
                  + (after.empty() ? "" : "&after=" + after);
    auto r = client().get(target);
    INFO("GET " << target << " answer " << r.status << ": " << r.body);
    REQUIRE(r.status == 200);
    REQUIRE(r.header("X-Read-Model-Position"));
    auto j = r.json_body();
    REQUIRE(j.contains("items"));
    REQUIRE(j["items"].is_array());
    REQUIRE(j.contains("next"));
    CHECK(j["items"].size() <= limit);
    for (auto& i : j["items"])
      out.push_back(i);
    if (j["next"].is_null())
      return out;
    REQUIRE(j["next"].is_string());
    after = j["next"].get<std::string>();
  }
  FAIL("GET /todo paging did not end");
  return out;
}

std::string repeat(const std::string& s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i)
    out += s;
  return out;
}

/// A JSON body of exactly `size` bytes: a valid create padded by an unknown field.
std::string padded_create_body(size_t size) {
  std::string prefix = R"({"description":"exactly sized body","pad":")";
  std::string suffix = R"("})";
  REQUIRE(size > prefix.size() + suffix.size());
  auto body = prefix + std::string(size - prefix.size() - suffix.size(), 'x') + suffix;
  REQUIRE(body.size() == size);
  return body;
}

const header_list json_type{{"Content-Type", "application/json"}};

} // namespace

// -- §1 writes ------------------------------------------------------------------

TEST_CASE("POST /todo creates a todo: 201, Location path, ETag \"1\" and {id, version 1, position}",
          "[e2e][todo][write]") {
  auto before = head();
  auto r = client().post_json("/todo", {{"description", "write the e2e tests"}});
  auto ack = check_write(r, 201);
  CHECK(ack.version == 1);
  CHECK(ack.position == before + 1);
  CHECK(r.header("Location") == "/todo/" + ack.id);
  CHECK(r.header("ETag") == "\"1\"");
  CHECK(head() == before + 1);
  auto items = history(ack.id);
  REQUIRE(items.size() == 1);
  CHECK(items[0]["type"] == "created");
  CHECK(items[0]["snapshot"] == todo_state(ack.id, "write the e2e tests", "Created", 1));
}

TEST_CASE("positions of writes are strictly increasing without gaps and name the event in $all",
          "[e2e][todo][write]") {
  auto before = head();
  std::vector<std::tuple<write_ack, std::string>> acks;
  auto a = create("first of two");
  acks.emplace_back(a, "created");
  auto b = create("second of two");
  acks.emplace_back(b, "created");
  acks.emplace_back(change_description(a.id, "first, renamed"), "description-changed");
  acks.emplace_back(put_in_progress(b.id), "status-changed-to-in-progress");
  acks.emplace_back(done(a.id), "status-changed-to-done");
  acks.emplace_back(undo_to(a.id, history(a.id)[0]["id"].get<std::string>()),
                    "undo-to-some-history-state");
  for (size_t i = 0; i < acks.size(); ++i)
    CHECK(std::get<0>(acks[i]).position == before + 1 + i);
  auto events = read_all(client(), before + 1);
  REQUIRE(events.size() == acks.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    auto& [ack, type] = acks[i];
    INFO("event " << events[i].dump());
    CHECK(events[i]["position"] == ack.position);
    CHECK(events[i]["stream"] == "todo-" + ack.id);
    CHECK(events[i]["version"] == ack.version);
    CHECK(events[i]["type"] == type);
  }
}

TEST_CASE("change-description appends exactly one description-changed event",
          "[e2e][todo][write]") {
  auto c = create("before the change");
  auto r = client().put_json("/todo/change-description",
                             {{"id", c.id}, {"description", "after the change"}});
  auto ack = check_write(r, 200);
  CHECK(ack.id == c.id);
  CHECK(ack.version == 2);
  CHECK(ack.position == c.position + 1);
  CHECK(head() == ack.position);
  auto items = history(c.id);
  REQUIRE(items.size() == 2);
  CHECK(items[1]["type"] == "description-changed");
  CHECK(items[1]["snapshot"] == todo_state(c.id, "after the change", "Created", 2));
}

TEST_CASE("put-in-progress appends exactly one status-changed-to-in-progress event",
          "[e2e][todo][write]") {
  auto c = create("to be started");
  auto ack = put_in_progress(c.id);
  CHECK(ack.id == c.id);
  CHECK(ack.version == 2);
  CHECK(ack.position == c.position + 1);
  CHECK(head() == ack.position);
  auto items = history(c.id);
  REQUIRE(items.size() == 2);
  CHECK(items[1]["type"] == "status-changed-to-in-progress");
  CHECK(items[1]["snapshot"] == todo_state(c.id, "to be started", "InProgress", 2));
}

TEST_CASE("done twice appends two status-changed-to-done events", "[e2e][todo][write]") {
  auto c = create("finish me twice");
  auto first = done(c.id);
  auto second = done(c.id);
  CHECK(first.version == 2);
  CHECK(second.version == 3);
  CHECK(second.position == first.position + 1);
  CHECK(head() == second.position);
  auto items = history(c.id);
  REQUIRE(items.size() == 3);
  CHECK(items[1]["type"] == "status-changed-to-done");
  CHECK(items[2]["type"] == "status-changed-to-done");
  CHECK(items[2]["snapshot"] == todo_state(c.id, "finish me twice", "Done", 3));
}

TEST_CASE("Done to InProgress is allowed and put-in-progress twice appends twice",
          "[e2e][todo][write]") {
  auto c = create("reopen me");
  done(c.id);
  auto reopened = put_in_progress(c.id);
  CHECK(reopened.version == 3);
  auto again = put_in_progress(c.id);
  CHECK(again.version == 4);
  auto items = history(c.id);
  REQUIRE(items.size() == 4);
  CHECK(items[2]["type"] == "status-changed-to-in-progress");
  CHECK(items[2]["snapshot"]["status"] == "InProgress");
  CHECK(items[3]["snapshot"] == todo_state(c.id, "reopen me", "InProgress", 4));
  auto renamed = change_description(c.id, "reopened and renamed");
  CHECK(renamed.version == 5);
}

TEST_CASE("undo-to restores description and status of the named event by appending "
          "undo-to-some-history-state",
          "[e2e][todo][write][undo]") {
  auto c = create("original text");
  change_description(c.id, "second text");
  put_in_progress(c.id);
  auto last = done(c.id);
  auto items = history(c.id);
  REQUIRE(items.size() == 4);
  auto e1 = items[0]["id"].get<std::string>();
  auto e2 = items[1]["id"].get<std::string>();
  auto e3 = items[2]["id"].get<std::string>();

  auto u = undo_to(c.id, e2);
  CHECK(u.id == c.id);
  CHECK(u.version == 5);
  CHECK(u.position == last.position + 1);
  CHECK(head() == u.position);
  items = history(c.id);
  REQUIRE(items.size() == 5);
  CHECK(items[4]["type"] == "undo-to-some-history-state");
  CHECK(items[4]["snapshot"] == todo_state(c.id, "second text", "Created", 5));
  // History is never rewritten: the earlier events are still there.
  CHECK(items[3]["type"] == "status-changed-to-done");
  CHECK(read_todo(c.id, u.position) == todo_state(c.id, "second text", "Created", 5));

  auto u3 = undo_to(c.id, e3);
  CHECK(u3.version == 6);
  CHECK(history(c.id)[5]["snapshot"] == todo_state(c.id, "second text", "InProgress", 6));

  auto u1 = undo_to(c.id, e1);
  CHECK(u1.version == 7);
  CHECK(history(c.id)[6]["snapshot"] == todo_state(c.id, "original text", "Created", 7));
  CHECK(read_todo(c.id, u1.position) == todo_state(c.id, "original text", "Created", 7));

  // Undoing to an undo event is allowed too: it restores that event's state.
  auto undo_event = history(c.id)[4]["id"].get<std::string>();
  auto u4 = undo_to(c.id, undo_event);
  CHECK(u4.version == 8);
  CHECK(history(c.id)[7]["snapshot"] == todo_state(c.id, "second text", "Created", 8));

  // Undoing to the latest event changes nothing but still appends one event.
  auto latest = history(c.id)[7]["id"].get<std::string>();
  auto same = undo_to(c.id, latest);
  CHECK(same.version == 9);
  CHECK(history(c.id)[8]["snapshot"] == todo_state(c.id, "second text", "Created", 9));
}

TEST_CASE("undo-to with an event of another todo is a 404 and appends nothing",
          "[e2e][todo][write][undo]") {
  auto a = create("todo a");
  auto b = create("todo b");
  auto event_of_b = history(b.id)[0]["id"].get<std::string>();
  auto before = head();
  check_rejected(client().put("/todo/" + a.id + "/undo-to/" + event_of_b), 404, before);
  CHECK(history(a.id).size() == 1);
  CHECK(history(b.id).size() == 1);
}

TEST_CASE("undo-to with an unknown or malformed event id is a 404 and appends nothing",
          "[e2e][todo][write][undo]") {
  auto a = create("todo with few events");
  auto before = head();
  check_rejected(client().put("/todo/" + a.id + "/undo-to/" + random_uuid()), 404, before);
  check_rejected(client().put("/todo/" + a.id + "/undo-to/not-an-event"), 404, before);
  CHECK(history(a.id).size() == 1);
}

TEST_CASE("writes on an unknown todo are 404 and append nothing", "[e2e][todo][write]") {
  auto unknown = random_uuid();
  auto event = random_uuid();
  auto before = head();
  check_rejected(client().put("/todo/" + unknown + "/put-in-progress"), 404, before);
  check_rejected(client().put("/todo/" + unknown + "/done"), 404, before);
  auto undo = client().put("/todo/" + unknown + "/undo-to/" + event);
  check_rejected(undo, 404, before);
  CHECK(undo.json_body()["detail"] == "todo not found"); // as for every write on it
  check_rejected(client().put_json("/todo/change-description",
                                   {{"id", unknown}, {"description", "nobody home"}}),
                 404, before);
  check_problem(client().get("/todo/" + unknown + "/history"), 404);
  check_problem(client().get("/todo/" + unknown + "/snapshot/" + event), 404);
}

// -- §1 history and snapshots -------------------------------------------------

TEST_CASE("history lists events oldest first with id, type, version, position, occurredAt "
          "and snapshot",
          "[e2e][todo][history]") {
  auto c = create("history subject");
  auto a2 = change_description(c.id, "history subject, renamed");
  auto a3 = put_in_progress(c.id);
  auto a4 = done(c.id);
  auto items = history(c.id);
  REQUIRE(items.size() == 4);
  std::vector<uint64_t> positions{c.position, a2.position, a3.position, a4.position};
  std::vector<std::string> types{"created", "description-changed",
                                 "status-changed-to-in-progress", "status-changed-to-done"};
  std::vector<json> snapshots{
    todo_state(c.id, "history subject", "Created", 1),
    todo_state(c.id, "history subject, renamed", "Created", 2),
    todo_state(c.id, "history subject, renamed", "InProgress", 3),
    todo_state(c.id, "history subject, renamed", "Done", 4),
  };
  std::set<std::string> ids;
  std::string previous_time;
  for (size_t i = 0; i < items.size(); ++i) {
    auto& it = items[i];
    INFO("item " << it.dump());
    REQUIRE(it.is_object());
    CHECK(it.size() == 6);
    REQUIRE(it["id"].is_string());
    CHECK(is_canonical_uuid(it["id"].get<std::string>()));
    ids.insert(it["id"].get<std::string>());
    CHECK(it["type"] == types[i]);
    CHECK(it["version"] == i + 1);
    CHECK(it["position"] == positions[i]);
    REQUIRE(it["occurredAt"].is_string());
    auto t = it["occurredAt"].get<std::string>();
    CHECK(is_rfc3339_ms_utc(t));
    CHECK(t >= previous_time);
    previous_time = t;
    CHECK(it["snapshot"] == snapshots[i]);
  }
  CHECK(ids.size() == 4);
  // The same events, as the event store shows them.
  auto stream = client().get("/streams/todo-" + c.id);
  REQUIRE(stream.status == 200);
  auto events = stream.json_body()["items"];
  REQUIRE(events.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(events[i]["id"] == items[i]["id"]);
    CHECK(events[i]["occurredAt"] == items[i]["occurredAt"]);
  }
}

TEST_CASE("snapshot/{eventId} equals the history snapshot of that event",
          "[e2e][todo][history]") {
  auto c = create("snapshot subject");
  change_description(c.id, "snapshot subject v2");
  put_in_progress(c.id);
  done(c.id);
  undo_to(c.id, history(c.id)[1]["id"].get<std::string>());
  auto items = history(c.id);
  REQUIRE(items.size() == 5);
  for (auto& it : items) {
    auto r = client().get("/todo/" + c.id + "/snapshot/" + it["id"].get<std::string>());
    INFO("snapshot answer " << r.status << ": " << r.body);
    REQUIRE(r.status == 200);
    CHECK(r.header("Content-Type") == std::optional<std::string>{"application/json; charset=utf-8"});
    CHECK(r.json_body() == it["snapshot"]);
  }
}

TEST_CASE("history and snapshot are conditional GETs: the ETag is the history's last version "
          "or the event's, If-None-Match naming it a 304, If-Match naming another a 412; from "
          "the stream cache and from a log reader alike",
          "[e2e][todo][history]") {
  // With the cache every request after the first read is a hit; without it
  // (--storage.stream-cache-mb=0) every one goes through a log reader.
  bool cached = GENERATE(true, false);
  CAPTURE(cached);
  std::unique_ptr<server> uncached;
  std::unique_ptr<http_client> own;
  if (!cached) {
    uncached = std::make_unique<server>(server_options::with_args({"--storage.stream-cache-mb=0"}));
    own = std::make_unique<http_client>(uncached->port());
  }
  http_client& c = cached ? client() : *own;
  auto todo = ack_of(c.post_json("/todo", {{"description", "conditional history"}}));
  REQUIRE(c.put("/todo/" + todo.id + "/put-in-progress").status == 200);
  auto url = "/todo/" + todo.id + "/history";
  auto full = c.get(url);
  REQUIRE(full.status == 200);
  CHECK(full.header("ETag") == "\"2\"");
  for (std::string tag : {"\"2\"", "W/\"2\"", "\"7\", \"2\"", "*"}) {
    INFO("If-None-Match: " << tag);
    auto r = c.get(url, {{"If-None-Match", tag}});
    CHECK(r.status == 304);
    CHECK(r.body.empty());
    CHECK(r.header("ETag") == "\"2\"");
  }
  check_problem(c.get(url, {{"If-Match", "\"1\""}}), 412);
  CHECK(c.get(url, {{"If-Match", "\"2\""}}).body == full.body);
  // A write changes the tag: the old one no longer matches.
  REQUIRE(c.put("/todo/" + todo.id + "/done").status == 200);
  auto after = c.get(url, {{"If-None-Match", "\"2\""}});
  CHECK(after.status == 200);
  CHECK(after.header("ETag") == "\"3\"");
  CHECK(after.json_body()["items"].size() == 3);

  // The state after an event never changes: its tag is the event's version,
  // whatever the todo's version now.
  auto items = after.json_body()["items"];
  for (size_t i = 0; i < items.size(); ++i) {
    auto snap = "/todo/" + todo.id + "/snapshot/" + items[i]["id"].get<std::string>();
    auto tag = "\"" + std::to_string(i + 1) + "\"";
    INFO(snap);
    auto r = c.get(snap);
    REQUIRE(r.status == 200);
    CHECK(r.header("ETag") == tag);
    auto not_modified = c.get(snap, {{"If-None-Match", tag}});
    CHECK(not_modified.status == 304);
    CHECK(not_modified.body.empty());
    CHECK(c.get(snap, {{"If-None-Match", "\"9\""}}).json_body() == items[i]["snapshot"]);
    check_problem(c.get(snap, {{"If-Match", "\"9\""}}), 412);
  }
  auto hits = metric(c, "eventsd_stream_cache_hits_total");
  CHECK((cached ? hits > 0 : hits == 0));
}

TEST_CASE("a GET or HEAD whose answer has no ETag (GET /todo, GET /streams, /healthz, "
          "/metrics) evaluates its preconditions: If-Match with tags is a 412, "
          "If-None-Match: * a 304, If-Match: * and If-None-Match with tags hold",
          "[e2e][todo][conditional]") {
  auto& c = client();
  create("a listed todo");
  for (std::string target : {"/todo", "/todo?status=Created&limit=1", "/streams", "/healthz",
                             "/metrics"}) {
    INFO(target);
    auto plain = c.get(target);
    REQUIRE(plain.status == 200);
    REQUIRE_FALSE(plain.header("ETag"));
    auto failed = c.get(target, {{"If-Match", "\"1\""}});
    check_problem(failed, 412);
    CHECK(failed.json_body()["detail"].get<std::string>().find("no entity tag") != std::string::npos);
    CHECK(c.request("HEAD", target, std::nullopt, {{"If-Match", "\"1\""}}).status == 412);
    auto unchanged = c.get(target, {{"If-None-Match", "*"}});
    CHECK(unchanged.status == 304);
    CHECK_FALSE(unchanged.header("Content-Type"));
    CHECK(c.request("HEAD", target, std::nullopt, {{"If-None-Match", "*"}}).status == 304);
    CHECK(c.get(target, {{"If-Match", "*"}}).status == 200);
    CHECK(c.get(target, {{"If-None-Match", "\"1\""}}).status == 200);
    CHECK(c.get(target, {{"If-None-Match", "\"1\""}}).body.size() > 0);
  }
  // Errors are not representations: no precondition turns them into a 304.
  check_problem(c.get("/todo?limit=x", {{"If-None-Match", "*"}}), 400);
  // The event stream is exempt: its GET subscribes, its HEAD answers as that GET.
  http_client own{shared_server().port()};
  CHECK(own.request("HEAD", "/subscribe/$all", std::nullopt, {{"If-None-Match", "*"}}).status == 200);
  CHECK(own.request("HEAD", "/subscribe/$all", std::nullopt, {{"If-Match", "\"1\""}}).status == 200);
}

TEST_CASE("a read's 412 explains a malformed entity tag: an unquoted If-Match matches nothing, "
          "a malformed If-None-Match is ignored",
          "[e2e][todo][conditional]") {
  auto& c = client();
  auto todo = ack_of(c.post_json("/todo", {{"description", "tags"}}));
  auto page = "/streams/todo-" + todo.id; // its ETag is "1"
  auto detail = [](const response& r) { return r.json_body().value("detail", std::string{}); };
  auto unquoted = c.get(page, {{"If-Match", "1"}});
  check_problem(unquoted, 412);
  CHECK(detail(unquoted).find("If-Match is not a list of entity tags") != std::string::npos);
  CHECK(detail(unquoted).find("If-Match: \"3\"") != std::string::npos);
  auto ignored = c.get(page, {{"If-Match", "\"7\""}, {"If-None-Match", "1"}});
  check_problem(ignored, 412);
  CHECK(detail(ignored).find("If-None-Match is not a list of entity tags, so it is ignored") !=
        std::string::npos);
  CHECK(c.get(page, {{"If-None-Match", "1"}}).status == 200);
  // Where the answer has no entity tag, no quoting helps: only `*` holds.
  auto untagged = c.get("/healthz", {{"If-Match", "1"}});
  check_problem(untagged, 412);
  CHECK(detail(untagged).find("only as `*`") != std::string::npos);
  // A read-model answer's 412 still says where the read model was.
  CHECK(c.get("/todo?minPosition=" + std::to_string(todo.position), {{"If-Match", "\"1\""}})
          .header("X-Read-Model-Position"));
}

TEST_CASE("a history read again comes from the stream cache and shows every write "
          "acknowledged before it",
          "[e2e][todo][history]") {
  auto& c = client();
  auto hits = [&] { return metric(c, "eventsd_stream_cache_hits_total"); };
  auto misses = [&] { return metric(c, "eventsd_stream_cache_misses_total"); };
  auto t = create("cached history");
  const auto hits0 = hits(), misses0 = misses();
  auto first = history(t.id);
  REQUIRE(first.size() == 1);
  CHECK(misses() == misses0 + 1);
  CHECK(history(t.id) == first);
  CHECK(hits() == hits0 + 1);
  // Each acknowledged write is in the very next history: the write dropped
  // the cached one, which is read again.
  auto a2 = put_in_progress(t.id);
  auto second = history(t.id);
  REQUIRE(second.size() == 2);
  CHECK(second[1]["position"] == a2.position);
  CHECK(second[1]["snapshot"]["status"] == "InProgress");
  auto a3 = done(t.id);
  auto third = history(t.id);
  REQUIRE(third.size() == 3);
  CHECK(third[2]["position"] == a3.position);
  CHECK(history(t.id) == third);
  CHECK(misses() == misses0 + 3);
  CHECK(hits() == hits0 + 2);
  CHECK(metric(c, "eventsd_stream_cache_streams") >= 1);
  CHECK(metric(c, "eventsd_stream_cache_bytes") > 0);
}

TEST_CASE("a conditional history read is answered from the todo's version: its 304 or 412 "
          "reads no event, however long the history",
          "[e2e][todo][history]") {
  // Every history page read fails (a failpoint), and no stream is cached:
  // an answer that needs no page must come without one.
  std::unique_ptr<server> s;
  with_failpoints("log-reader.history-page-fails", [&] {
    s = std::make_unique<server>(server_options::with_args({"--storage.stream-cache-mb=0"}));
  });
  http_client c{s->port()};
  // Another todo first: the version (2) is not the position (3).
  REQUIRE(c.post_json("/todo", {{"description", "before"}}).status == 201);
  auto todo = ack_of(c.post_json("/todo", {{"description", "long history"}}));
  REQUIRE(c.put("/todo/" + todo.id + "/put-in-progress").status == 200);
  auto url = "/todo/" + todo.id + "/history";
  auto read = c.get(url);
  INFO("unconditional: " << read.status << " " << read.body);
  CHECK(read.status >= 500); // the failpoint holds: a page read fails

  for (std::string method : {"GET", "HEAD"}) {
    INFO(method);
    auto r = c.request(method, url, std::nullopt, {{"If-None-Match", "\"2\""}});
    CHECK(r.status == 304);
    CHECK(r.header("ETag") == "\"2\"");
    CHECK(r.body.empty());
  }
  auto mismatch = c.get(url, {{"If-Match", "\"1\""}});
  check_problem(mismatch, 412);
  CHECK(mismatch.header("ETag") == "\"2\"");
  check_problem(c.get("/todo/" + random_uuid() + "/history", {{"If-None-Match", "\"1\""}}), 404);
  // A tag that no longer matches needs the events: the page read fails.
  CHECK(c.get(url, {{"If-None-Match", "\"1\""}}).status >= 500);
}

TEST_CASE("with --storage.stream-cache-mb=0 every history is read from RocksDB",
          "[e2e][todo][history]") {
  server s{server_options::with_args({"--storage.stream-cache-mb=0"})};
  http_client c{s.port()};
  auto created = c.post_json("/todo", {{"description", "uncached"}});
  REQUIRE(created.status == 201);
  auto id = ack_of(created).id;
  for (int i = 0; i < 3; ++i) {
    auto r = c.get("/todo/" + id + "/history");
    REQUIRE(r.status == 200);
    CHECK(r.json_body()["items"].size() == 1);
  }
  CHECK(metric(c, "eventsd_stream_cache_hits_total") == 0);
  CHECK(metric(c, "eventsd_stream_cache_misses_total") == 3);
  CHECK(metric(c, "eventsd_stream_cache_streams") == 0);
}

TEST_CASE("snapshot of an unknown event, an event of another todo or a malformed event id "
          "is a 404",
          "[e2e][todo][history]") {
  auto a = create("snapshot owner");
  auto b = create("someone else");
  auto event_of_b = history(b.id)[0]["id"].get<std::string>();
  check_problem(client().get("/todo/" + a.id + "/snapshot/" + random_uuid()), 404);
  check_problem(client().get("/todo/" + a.id + "/snapshot/" + event_of_b), 404);
  check_problem(client().get("/todo/" + a.id + "/snapshot/not-a-uuid"), 404);
}

// -- §1 reads from the read model ------------------------------------------------

TEST_CASE("GET /todo/{id} with minPosition shows the write at once, with X-Read-Model-Position",
          "[e2e][todo][read]") {
  auto c = create("read me back");
  auto r = client().get("/todo/" + c.id + "?minPosition=" + std::to_string(c.position));
  INFO("answer " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type") == std::optional<std::string>{"application/json; charset=utf-8"});
  REQUIRE(r.header("X-Read-Model-Position"));
  CHECK(std::stoull(*r.header("X-Read-Model-Position")) >= c.position);
  CHECK(r.json_body() == todo_state(c.id, "read me back", "Created", 1));

  auto d = done(c.id);
  CHECK(read_todo(c.id, d.position) == todo_state(c.id, "read me back", "Done", 2));
}

TEST_CASE("GET /todo/{id} and GET /todo eventually show a write without minPosition",
          "[e2e][todo][read]") {
  auto c = create("eventually visible");
  auto p = put_in_progress(c.id);
  json seen;
  bool converged = eventually([&] {
    auto r = client().get("/todo/" + c.id);
    if (r.status != 200)
      return false;
    CHECK(r.header("X-Read-Model-Position"));
    seen = r.json_body();
    return seen["version"] == p.version;
  });
  INFO("last seen " << seen.dump());
  REQUIRE(converged);
  CHECK(seen == todo_state(c.id, "eventually visible", "InProgress", 2));

  bool listed = eventually([&] {
    auto items = list_all("&status=InProgress", 1000);
    for (auto& i : items)
      if (i["id"] == c.id)
        return true;
    return false;
  });
  CHECK(listed);
}

TEST_CASE("GET /todo with minPosition lists the write, items are {id, description, status, "
          "version}",
          "[e2e][todo][read]") {
  auto c = create("listed todo");
  auto r = client().get("/todo?limit=1000&minPosition=" + std::to_string(c.position));
  REQUIRE(r.status == 200);
  REQUIRE(r.header("X-Read-Model-Position"));
  CHECK(std::stoull(*r.header("X-Read-Model-Position")) >= c.position);
  auto j = r.json_body();
  REQUIRE(j.is_object());
  REQUIRE(j.contains("items"));
  REQUIRE(j.contains("next"));
  bool found = false;
  for (auto& i : list_all("&minPosition=" + std::to_string(c.position), 1000)) {
    INFO("item " << i.dump());
    CHECK(i.size() == 4);
    CHECK(i["id"].is_string());
    CHECK(i["description"].is_string());
    CHECK(i["status"].is_string());
    CHECK(i["version"].is_number_unsigned());
    if (i["id"] == c.id) {
      found = true;
      CHECK(i == todo_state(c.id, "listed todo", "Created", 1));
    }
  }
  CHECK(found);
}

TEST_CASE("minPosition beyond the log head with waitMs=200 is a 503 with Retry-After",
          "[e2e][todo][read]") {
  auto c = create("waiting for the future");
  auto future = std::to_string(c.position + 1000000);
  for (auto target : {"/todo?minPosition=" + future + "&waitMs=200",
                      "/todo/" + c.id + "?minPosition=" + future + "&waitMs=200"}) {
    INFO("GET " << target);
    auto started = std::chrono::steady_clock::now();
    auto r = client().get(target);
    auto took = std::chrono::steady_clock::now() - started;
    check_problem(r, 503);
    CHECK(r.header("Retry-After"));
    CHECK(took < 5s); // waitMs was honoured, not the 5 s default
    // Where the read model had got to, as on every read-model answer.
    auto at = r.header("X-Read-Model-Position");
    REQUIRE(at);
    CHECK(std::stoull(*at) < c.position + 1000000);
  }
}

TEST_CASE("a client that closes its connection, or its sending side, during a minPosition wait "
          "is not waited for: the connection closes at once; a request pipelined behind a wait "
          "is answered after it",
          "[e2e][todo][read]") {
  auto c = create("abandoned wait");
  auto target = "/todo/" + c.id + "?minPosition=" + std::to_string(c.position + 1000000)
                + "&waitMs=30000";
  auto request = "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n";
  auto connect = [] {
    int fd = connect_loopback(shared_server().port());
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
  };
  auto abandoned = [&] { return metric(client(), "eventsd_http_requests_abandoned_total"); };
  const double before = abandoned();

  // Only its sending side: the server closes without an answer, long before waitMs.
  int fd = connect();
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL)
          == static_cast<ssize_t>(request.size()));
  std::this_thread::sleep_for(200ms); // the wait has begun
  ::shutdown(fd, SHUT_WR);
  auto started = std::chrono::steady_clock::now();
  char buf[256];
  auto n = ::recv(fd, buf, sizeof buf, 0);
  auto took = std::chrono::steady_clock::now() - started;
  ::close(fd);
  CHECK(n == 0); // end of stream, no answer
  CHECK(took < 5s);
  CHECK(abandoned() == before + 1);

  // The whole connection: counted, and its descriptor closed.
  fd = connect();
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL)
          == static_cast<ssize_t>(request.size()));
  std::this_thread::sleep_for(200ms);
  ::close(fd);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (abandoned() < before + 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  CHECK(abandoned() == before + 2);

  // A next request sent while the first waits is no sign of a client gone.
  fd = connect();
  auto short_wait = "GET /todo/" + c.id + "?minPosition=" + std::to_string(c.position + 1000000)
                    + "&waitMs=700 HTTP/1.1\r\nHost: x\r\n\r\n";
  auto next = std::string{"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"};
  REQUIRE(::send(fd, short_wait.data(), short_wait.size(), MSG_NOSIGNAL)
          == static_cast<ssize_t>(short_wait.size()));
  std::this_thread::sleep_for(200ms);
  REQUIRE(::send(fd, next.data(), next.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(next.size()));
  std::string raw;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
    raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  INFO(raw);
  CHECK(raw.rfind("HTTP/1.1 503 ", 0) == 0);
  CHECK(raw.find("HTTP/1.1 200 ") != std::string::npos);
  CHECK(abandoned() == before + 2);

  // The same, sent in one write and followed by the end of what the client
  // sends (nc -N): the next request was read with the first, before the end.
  for (int i = 0; i < 5; ++i) {
    fd = connect();
    auto both = short_wait + next;
    REQUIRE(::send(fd, both.data(), both.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(both.size()));
    ::shutdown(fd, SHUT_WR);
    raw.clear();
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
      raw.append(buf, static_cast<size_t>(n));
    ::close(fd);
    INFO("try " << i << ": " << raw);
    CHECK(raw.rfind("HTTP/1.1 503 ", 0) == 0);
    CHECK(raw.find("HTTP/1.1 200 ") != std::string::npos);
  }
  CHECK(abandoned() == before + 2);
}

TEST_CASE("minPosition beyond int64 is a 400 naming it, not a wait", "[e2e][todo][read]") {
  auto c = create("no such position");
  for (auto target : {std::string{"/todo?minPosition=9223372036854775808"},
                      "/todo/" + c.id + "?minPosition=99999999999999999999999"}) {
    INFO("GET " << target);
    auto r = client().get(target);
    check_problem(r, 400);
    check_field_error(r, "minPosition");
  }
}

TEST_CASE("waitMs above 30000 is accepted, not a 400 (the clamped wait itself: modes_test)",
          "[e2e][todo][read]") {
  auto c = create("clamped wait");
  auto r = client().get("/todo/" + c.id + "?minPosition=" + std::to_string(c.position)
                        + "&waitMs=999999999");
  INFO(r.body);
  CHECK(r.status == 200);
  auto l = client().get("/todo?minPosition=" + std::to_string(c.position) + "&waitMs=30001");
  CHECK(l.status == 200);
}

TEST_CASE("non-numeric or negative minPosition and waitMs are 400", "[e2e][todo][read]") {
  auto c = create("bad query numbers");
  for (auto path : {std::string{"/todo"}, "/todo/" + c.id}) {
    for (auto q : {"minPosition=abc", "minPosition=-1", "waitMs=abc", "waitMs=-1"}) {
      INFO("GET " << path << "?" << q);
      check_problem(client().get(path + "?" + q), 400);
    }
  }
}

TEST_CASE("GET /todo/{id} is a conditional GET: If-None-Match naming its version is a 304, "
          "If-Match naming another a 412",
          "[e2e][todo][read]") {
  auto c = create("cache me");
  auto url = "/todo/" + c.id + "?minPosition=" + std::to_string(c.position);
  auto full = client().get(url);
  REQUIRE(full.status == 200);
  REQUIRE(full.header("ETag") == "\"1\"");
  for (std::string tag : {"\"1\"", "W/\"1\"", "\"7\", \"1\"", "*"}) {
    INFO("If-None-Match: " << tag);
    auto r = client().get(url, {{"If-None-Match", tag}});
    CHECK(r.status == 304);
    CHECK(r.body.empty());
    CHECK(r.header("ETag") == "\"1\"");
    CHECK(r.header("X-Read-Model-Position"));
  }
  auto changed = client().get(url, {{"If-None-Match", "\"2\""}});
  CHECK(changed.status == 200);
  CHECK(changed.body == full.body);
  check_problem(client().get(url, {{"If-Match", "\"2\""}}), 412);
  check_problem(client().get(url, {{"If-Match", "W/\"1\""}}), 412); // If-Match is strong
  CHECK(client().get(url, {{"If-Match", "\"1\""}}).status == 200);
}

TEST_CASE("GET /todo/{id} of an unknown todo is a 404 with X-Read-Model-Position",
          "[e2e][todo][read]") {
  auto c = create("make the read model non-empty");
  auto waited = client().get("/todo/" + random_uuid() + "?minPosition=" + std::to_string(c.position));
  check_problem(waited, 404);
  REQUIRE(waited.header("X-Read-Model-Position"));
  CHECK(std::stoull(*waited.header("X-Read-Model-Position")) >= c.position);
  auto at_once = client().get("/todo/" + random_uuid());
  check_problem(at_once, 404);
  CHECK(at_once.header("X-Read-Model-Position"));
}

TEST_CASE("GET /todo without limit answers 100 items and a cursor when there are more",
          "[e2e][todo][read][paging]") {
  uint64_t last = 0;
  for (int i = 0; i < 101; ++i)
    last = create("one of a hundred and one " + std::to_string(i)).position;
  auto r = client().get("/todo?minPosition=" + std::to_string(last));
  REQUIRE(r.status == 200);
  auto j = r.json_body();
  CHECK(j["items"].size() == 100);
  CHECK(j["next"].is_string());
}

TEST_CASE("GET /todo pages with limit and the next cursor, each todo exactly once",
          "[e2e][todo][read][paging]") {
  std::set<std::string> mine;
  uint64_t last = 0;
  for (int i = 0; i < 7; ++i) {
    auto a = create("paged todo " + std::to_string(i));
    mine.insert(a.id);
    last = a.position;
  }
  // Every page but the last is full and carries a cursor.
  auto first = client().get("/todo?limit=3&minPosition=" + std::to_string(last));
  REQUIRE(first.status == 200);
  auto fj = first.json_body();
  CHECK(fj["items"].size() == 3);
  REQUIRE(fj["next"].is_string());

  auto items = list_all("", 3);
  std::set<std::string> seen;
  for (auto& i : items) {
    auto id = i["id"].get<std::string>();
    INFO("id " << id);
    CHECK(seen.insert(id).second); // no todo twice
  }
  for (auto& id : mine)
    CHECK(seen.count(id) == 1);
  // Same set whatever the page size.
  auto big = list_all("", 1000);
  CHECK(big.size() == items.size());
}

TEST_CASE("GET /todo?status= lists only todos with that status", "[e2e][todo][read]") {
  auto a = create("filter created");
  auto b = create("filter in progress");
  auto c = create("filter done");
  put_in_progress(b.id);
  auto last = done(c.id);
  read_todo(c.id, last.position);
  std::map<std::string, std::string> expected{
    {"Created", a.id}, {"InProgress", b.id}, {"Done", c.id}};
  for (auto& [status, id] : expected) {
    INFO("status " << status);
    std::set<std::string> ids;
    for (auto& i : list_all("&status=" + status, 100)) {
      CHECK(i["status"] == status);
      ids.insert(i["id"].get<std::string>());
    }
    CHECK(ids.count(a.id) == (status == "Created" ? 1u : 0u));
    CHECK(ids.count(b.id) == (status == "InProgress" ? 1u : 0u));
    CHECK(ids.count(c.id) == (status == "Done" ? 1u : 0u));
  }
}

TEST_CASE("GET /todo with an unknown status filter is a 400", "[e2e][todo][read]") {
  for (auto s : {"Archived", "InProgres", "Created,Done"}) {
    INFO("status=" << s);
    auto r = client().get(std::string{"/todo?status="} + s);
    check_problem(r, 400);
    check_field_error(r, "status");
  }
}

TEST_CASE("GET /todo with a non-numeric or negative limit is a 400", "[e2e][todo][read]") {
  for (auto l : {"abc", "-1", "10x"}) {
    INFO("limit=" << l);
    check_problem(client().get(std::string{"/todo?limit="} + l), 400);
  }
}

TEST_CASE("GET /todo with a malformed after cursor is a 400", "[e2e][todo][read]") {
  for (auto a : {"abc", "-1", "%7B%7D", "not-a-cursor"}) {
    INFO("after=" << a);
    check_problem(client().get(std::string{"/todo?after="} + a), 400);
  }
}

TEST_CASE("GET /todo clamps limit above 1000 to 1000", "[e2e][todo][read][paging]") {
  // Make sure more than 1000 todos exist; eight writers keep this quick.
  std::atomic<int> failures{0};
  std::atomic<uint64_t> last{0};
  std::mutex mtx;
  std::string first_failure;
  auto port = shared_server().port(); // started here: the server dies with its starting thread
  std::vector<std::thread> writers;
  for (int t = 0; t < 8; ++t)
    writers.emplace_back([&, t] {
      auto fail = [&](const std::string& why) {
        std::lock_guard lock{mtx};
        if (failures++ == 0)
          first_failure = why;
      };
      try {
        http_client c{port};
        for (int i = 0; i < 126; ++i) {
          auto r = c.post_json("/todo", {{"description", "bulk " + std::to_string(t) + "/"
                                                           + std::to_string(i)}});
          if (r.status != 201) {
            fail(std::to_string(r.status) + " " + r.body);
            continue;
          }
          auto p = ack_of(r).position;
          auto prev = last.load();
          while (p > prev && !last.compare_exchange_weak(prev, p)) {
          }
        }
      } catch (const std::exception& e) {
        fail(e.what());
      }
    });
  for (auto& w : writers)
    w.join();
  INFO("first failure: " << first_failure);
  REQUIRE(failures == 0);
  for (auto limit : {"1001", "5000", "99999999999999999999999"}) {
    INFO("limit=" << limit);
    auto r = client().get(std::string{"/todo?limit="} + limit
                          + "&minPosition=" + std::to_string(last.load()));
    INFO(r.body.substr(0, 300));
    REQUIRE(r.status == 200);
    auto j = r.json_body();
    CHECK(j["items"].size() == 1000);
    CHECK(j["next"].is_string());
  }
  auto exact = client().get("/todo?limit=1000");
  REQUIRE(exact.status == 200);
  CHECK(exact.json_body()["items"].size() == 1000);
}

// -- §1 optimistic concurrency ----------------------------------------------

TEST_CASE("If-Match with the current version is accepted by every write", "[e2e][todo][if-match]") {
  auto c = create("guarded todo");
  auto e1 = history(c.id)[0]["id"].get<std::string>();
  CHECK(put_in_progress(c.id, {{"If-Match", "\"1\""}}).version == 2);
  CHECK(change_description(c.id, "guarded, renamed", {{"If-Match", "\"2\""}}).version == 3);
  CHECK(done(c.id, {{"If-Match", "\"3\""}}).version == 4);
  CHECK(undo_to(c.id, e1, {{"If-Match", "\"4\""}}).version == 5);
  CHECK(history(c.id).size() == 5);
}

TEST_CASE("If-Match with another version is a 412 and appends nothing",
          "[e2e][todo][if-match]") {
  auto c = create("stale client");
  put_in_progress(c.id);
  auto e1 = history(c.id)[0]["id"].get<std::string>();
  auto before = head();
  for (auto tag : {"\"1\"", "\"3\"", "\"999\"", "\"abc\""}) {
    INFO("If-Match: " << tag);
    header_list h{{"If-Match", tag}};
    check_rejected(client().put("/todo/" + c.id + "/put-in-progress", h), 412, before);
    check_rejected(client().put("/todo/" + c.id + "/done", h), 412, before);
    check_rejected(client().put("/todo/" + c.id + "/undo-to/" + e1, h), 412, before);
    check_rejected(client().put_json("/todo/change-description",
                                     {{"id", c.id}, {"description", "lost update"}}, h),
                   412, before);
  }
  auto items = history(c.id);
  CHECK(items.size() == 2);
  CHECK(items.back()["snapshot"] == todo_state(c.id, "stale client", "InProgress", 2));
}

TEST_CASE("If-Match on an unknown todo is a 404", "[e2e][todo][if-match]") {
  auto unknown = random_uuid();
  auto before = head();
  header_list h{{"If-Match", "\"1\""}};
  check_rejected(client().put("/todo/" + unknown + "/done", h), 404, before);
  check_rejected(client().put("/todo/" + unknown + "/put-in-progress", h), 404, before);
  check_rejected(client().put("/todo/" + unknown + "/undo-to/" + random_uuid(), h), 404, before);
  check_rejected(client().put_json("/todo/change-description",
                                   {{"id", unknown}, {"description", "nobody"}}, h),
                 404, before);
}

TEST_CASE("If-Match is a list of entity tags: a write goes ahead when one strong tag names the "
          "current version, also across repeated header lines",
          "[e2e][todo][if-match]") {
  auto c = create("listed versions");
  CHECK(put_in_progress(c.id, {{"If-Match", "\"7\", \"1\""}}).version == 2);
  CHECK(done(c.id, {{"If-Match", "\"9\""}, {"If-Match", "\"2\""}}).version == 3);
  CHECK(put_in_progress(c.id, {{"If-Match", "\"x,y\", \"3\""}}).version == 4);
  CHECK(done(c.id, {{"If-Match", "*"}}).version == 5);
  CHECK(history(c.id).size() == 5);
}

TEST_CASE("If-Match compares strongly: a weak tag, a non-canonical number or a malformed list "
          "is a 412 and appends nothing",
          "[e2e][todo][if-match]") {
  auto c = create("strong comparison");
  put_in_progress(c.id); // version 2
  auto before = head();
  for (std::string tag : {"W/\"2\"", "\"02\"", "\"+2\"", "\"2\"x", "2", "\"1\", W/\"2\"", "\"2"}) {
    INFO("If-Match: " << tag);
    auto r = client().put("/todo/" + c.id + "/done", {{"If-Match", tag}});
    check_rejected(r, 412, before);
    // A value that is no list of tags is named as such, not as a mismatch only.
    const bool malformed = tag == "\"2\"x" || tag == "2" || tag == "\"2";
    CHECK((r.json_body().value("detail", "").find("If-Match is not a list of entity tags")
           != std::string::npos)
          == malformed);
  }
  // The last line alone would match; the list of both lines does too (any match).
  CHECK(done(c.id, {{"If-Match", "W/\"2\""}, {"If-Match", "\"2\""}}).version == 3);
}

TEST_CASE("an empty If-Match is a list of no tags: it matches nothing, so the write is a 412",
          "[e2e][todo][if-match]") {
  auto c = create("empty precondition");
  auto before = head();
  for (auto tag : {"", ",", " , "}) {
    INFO("If-Match: '" << tag << "'");
    check_rejected(client().put("/todo/" + c.id + "/done", {{"If-Match", tag}}), 412, before);
  }
  CHECK(history(c.id).size() == 1);
}

TEST_CASE("If-None-Match on a write: `*` or a tag naming the current version is a 412 and "
          "appends nothing; other tags let the write through",
          "[e2e][todo][if-match]") {
  auto c = create("not that version");
  auto e1 = history(c.id)[0]["id"].get<std::string>();
  auto before = head();
  // A malformed value refuses the write too, rather than letting it through.
  for (auto tag : {"*", "\"1\"", "W/\"1\"", "\"5\", \"1\"", "1", "*, \"5\""}) {
    INFO("If-None-Match: " << tag);
    header_list h{{"If-None-Match", tag}};
    auto r = client().put("/todo/" + c.id + "/done", h);
    check_rejected(r, 412, before);
    CHECK(r.header("ETag") == "\"1\"");
    check_rejected(client().put("/todo/" + c.id + "/undo-to/" + e1, h), 412, before);
    check_rejected(client().put_json("/todo/change-description",
                                     {{"id", c.id}, {"description", "not again"}}, h),
                   412, before);
  }
  CHECK(done(c.id, {{"If-None-Match", "\"2\""}}).version == 2);
  // With If-Match too, both must hold.
  check_rejected(client().put("/todo/" + c.id + "/put-in-progress",
                              {{"If-Match", "\"2\""}, {"If-None-Match", "\"2\""}}),
                 412, head());
  CHECK(put_in_progress(c.id, {{"If-Match", "\"2\""}, {"If-None-Match", "\"1\""}}).version == 3);
  // The todo is checked first.
  check_rejected(client().put("/todo/" + random_uuid() + "/done", {{"If-None-Match", "*"}}), 404,
                 head());
}

// -- §1/§6 idempotency -----------------------------------------------------------

TEST_CASE("an Idempotency-Key replay answers the same 201, id, version and position and "
          "appends nothing",
          "[e2e][todo][idempotency]") {
  auto key = "e2e-" + random_uuid();
  header_list h{{"Idempotency-Key", key}};
  auto first = client().post_json("/todo", {{"description", "only once"}}, h);
  auto a = check_write(first, 201);
  auto before = head();
  CHECK(before == a.position);
  for (int i = 0; i < 2; ++i) {
    auto again = client().post_json("/todo", {{"description", "only once"}}, h);
    auto b = check_write(again, 201);
    CHECK(b.id == a.id);
    CHECK(b.version == a.version);
    CHECK(b.position == a.position);
    CHECK(again.header("Location") == first.header("Location"));
    CHECK(again.header("ETag") == first.header("ETag"));
    CHECK(head() == before);
  }
  CHECK(history(a.id).size() == 1);
  // Spelled differently, or with fields eventsd ignores, it is the same request.
  for (std::string body : {R"({ "description" : "only once" })",
                           R"({"client":"v2","description":"only once","trace":[1,2]})"}) {
    INFO("body " << body);
    header_list hj{{"Idempotency-Key", key}, {"Content-Type", "application/json"}};
    auto b = check_write(client().request("POST", "/todo", body, hj), 201);
    CHECK(b.id == a.id);
    CHECK(b.position == a.position);
    CHECK(head() == before);
  }
  // A different key creates a different todo.
  auto other = create("only once", {{"Idempotency-Key", key + "-other"}});
  CHECK(other.id != a.id);
}

TEST_CASE("an Idempotency-Key reused with a different body is a 409 and appends nothing",
          "[e2e][todo][idempotency]") {
  auto key = "e2e-" + random_uuid();
  header_list h{{"Idempotency-Key", key}};
  auto a = create("the first body", h);
  auto before = head();
  check_rejected(client().post_json("/todo", {{"description", "another body"}}, h), 409,
                 before);
  CHECK(history(a.id).size() == 1);
}

TEST_CASE("an Idempotency-Key of 128 characters is accepted, 129 is a 400",
          "[e2e][todo][idempotency]") {
  auto base = random_uuid();
  auto k128 = base + std::string(128 - base.size(), 'k');
  auto k129 = k128 + "k";
  auto ok = create("key of 128", {{"Idempotency-Key", k128}});
  CHECK(ok.version == 1);
  auto before = head();
  check_rejected(client().post_json("/todo", {{"description", "key of 129"}},
                                    {{"Idempotency-Key", k129}}),
                 400, before);
}

TEST_CASE("an Idempotency-Key is counted in characters, and given twice it is a 400",
          "[e2e][todo][idempotency]") {
  std::string k128;
  for (int i = 0; i < 128; ++i)
    k128 += "\xc3\xa9"; // é: two bytes, one character
  auto ok = create("key of 128 two-byte characters", {{"Idempotency-Key", k128}});
  CHECK(ok.version == 1);
  auto before = head();
  check_rejected(client().post_json("/todo", {{"description", "key of 129 characters"}},
                                    {{"Idempotency-Key", k128 + "\xc3\xa9"}}),
                 400, before);
  auto twice = client().post_json("/todo", {{"description", "two keys"}},
                                  {{"Idempotency-Key", random_uuid()},
                                   {"Idempotency-Key", random_uuid()}});
  check_rejected(twice, 400, before);
  check_field_error(twice, "Idempotency-Key");
  // Bytes that are no UTF-8 have no characters to count.
  auto not_text = client().post_json("/todo", {{"description", "key of 0xff bytes"}},
                                     {{"Idempotency-Key", std::string(8, '\xff')}});
  check_rejected(not_text, 400, before);
  check_field_error(not_text, "Idempotency-Key");
}

TEST_CASE("POST /todo evaluates If-Match and If-None-Match against /todo, which exists and has "
          "no entity tag: a tag in If-Match and If-None-Match: * are a 412 and create nothing",
          "[e2e][todo][concurrency]") {
  auto before = head();
  for (std::string refused : {"If-Match: \"1\"", "If-Match: \"5\", \"6\"", "If-Match: W/\"1\"",
                              "If-Match: 1", "If-None-Match: *", "If-None-Match: 1"}) {
    auto colon = refused.find(": ");
    auto r = client().post_json("/todo", {{"description", "conditional create"}},
                                {{refused.substr(0, colon), refused.substr(colon + 2)}});
    INFO(refused);
    check_rejected(r, 412, before);
    auto detail = r.json_body().value("detail", "");
    CHECK(detail.find("Idempotency-Key") != std::string::npos);
    // An unquoted value is named as such: it was no `*` and no version.
    const bool malformed = refused.back() == '1' && refused.find('"') == std::string::npos;
    CHECK((detail.find("is not a list of entity tags") != std::string::npos) == malformed);
    CHECK_FALSE(r.header("ETag"));
  }
  // `If-Match: *` holds (/todo exists), and no tag matches If-None-Match.
  create("created under If-Match: *", {{"If-Match", "*"}});
  create("created under If-None-Match: \"1\"", {{"If-None-Match", "\"1\""}});
  CHECK(head() == before + 2);
}

// -- §4/§6 validation ------------------------------------------------------------

TEST_CASE("a description of 0 or 1 character is a 400 naming description and appends nothing",
          "[e2e][todo][validation]") {
  auto c = create("ok"); // two characters is the minimum
  CHECK(c.version == 1);
  auto before = head();
  for (auto d : {"", "x", " ", "é"}) {
    INFO("description `" << d << "`");
    auto r = client().post_json("/todo", {{"description", d}});
    check_rejected(r, 400, before);
    check_field_error(r, "description");
    auto u = client().put_json("/todo/change-description", {{"id", c.id}, {"description", d}});
    check_rejected(u, 400, before);
    check_field_error(u, "description");
  }
  CHECK(history(c.id).size() == 1);
}

TEST_CASE("descriptions are not trimmed: two spaces is a valid description",
          "[e2e][todo][validation]") {
  auto c = create("  ");
  CHECK(history(c.id)[0]["snapshot"]["description"] == "  ");
  auto padded = create(" padded ");
  CHECK(history(padded.id)[0]["snapshot"]["description"] == " padded ");
}

TEST_CASE("a description of 255 multi-byte code points is accepted and 256 is a 400",
          "[e2e][todo][validation]") {
  for (std::string ch : {"é", "€", "😀"}) {
    INFO("character " << ch);
    auto ok = repeat(ch, 255);
    auto c = create(ok);
    CHECK(history(c.id)[0]["snapshot"]["description"] == ok);
    CHECK(read_todo(c.id, c.position)["description"] == ok);
    auto before = head();
    auto r = client().post_json("/todo", {{"description", repeat(ch, 256)}});
    check_rejected(r, 400, before);
    check_field_error(r, "description");
    auto u = client().put_json("/todo/change-description",
                               {{"id", c.id}, {"description", repeat(ch, 256)}});
    check_rejected(u, 400, before);
    check_field_error(u, "description");
    CHECK(change_description(c.id, repeat(ch, 254) + "a").version == 2);
  }
  auto ascii = create(std::string(255, 'a'));
  CHECK(ascii.version == 1);
  auto before = head();
  check_rejected(client().post_json("/todo", {{"description", std::string(256, 'a')}}), 400,
                 before);
}

TEST_CASE("a description of the wrong type or missing is a 400 naming description",
          "[e2e][todo][validation]") {
  auto c = create("typed todo");
  auto before = head();
  for (auto body : {json{{"description", 42}}, json{{"description", nullptr}},
                    json{{"description", json::array({"ab"})}}, json{{"description", true}},
                    json::object(), json{{"desc", "typo in the name"}}}) {
    INFO("body " << body.dump());
    auto r = client().post_json("/todo", body);
    check_rejected(r, 400, before);
    check_field_error(r, "description");
    auto with_id = body;
    with_id["id"] = c.id;
    auto u = client().put_json("/todo/change-description", with_id);
    check_rejected(u, 400, before);
    check_field_error(u, "description");
  }
}

TEST_CASE("unknown fields in a body are ignored", "[e2e][todo][validation]") {
  auto r = client().post_json(
    "/todo", {{"description", "with extras"}, {"priority", 3}, {"tags", {"a", "b"}}, {"id", 7}});
  auto c = check_write(r, 201);
  auto u = client().put_json("/todo/change-description",
                             {{"id", c.id}, {"description", "still fine"}, {"status", "Done"}});
  check_write(u, 200);
  CHECK(history(c.id).back()["snapshot"] == todo_state(c.id, "still fine", "Created", 2));
}

TEST_CASE("a body means the same in every spelling: compact or spaced, escaped or not",
          "[e2e][todo][validation]") {
  // The compact flat form is read without the JSON parser; every other
  // spelling goes through it. Both must give the same todo.
  for (std::string body :
       {R"({"description":"same text"})", R"( { "description" : "same text" } )",
        R"({"description":"same\u0020text"})",
        R"({"x":"1","description":"same text","y":"2"})", R"({"description":"same text","n":1})"}) {
    INFO("body `" << body << "`");
    auto c = check_write(client().request("POST", "/todo", body, json_type), 201);
    CHECK(history(c.id).back()["snapshot"] == todo_state(c.id, "same text", "Created", 1));
  }
  // And a description that is not a string is refused the same way either way.
  for (std::string body : {R"({"description":7})", R"({"description":null})", R"({"x":"1"})"}) {
    INFO("body `" << body << "`");
    CHECK(client().request("POST", "/todo", body, json_type).status == 400);
  }
}

TEST_CASE("a malformed JSON body is a 400 problem and appends nothing",
          "[e2e][todo][validation]") {
  auto c = create("json target");
  auto before = head();
  // A raw NUL is no JSON anywhere; nlohmann's parser takes it for the end of
  // the text, which let anything after it through.
  const std::string nul_then_garbage = std::string{R"({"description":"abc"})"} + '\0' + "{{{";
  for (std::string body : {std::string{R"({"description": "abc")"},
                           std::string{R"({description: "abc"})"}, std::string{}, std::string{"{}}"},
                           std::string{R"({"description": "abc",})"}, std::string{"nul"},
                           nul_then_garbage}) {
    INFO("body `" << body << "`");
    check_rejected(client().request("POST", "/todo", body, json_type), 400, before);
    check_rejected(client().request("PUT", "/todo/change-description", body, json_type), 400,
                   before);
  }
  // A body-less route reads a body that says it is JSON just as strictly.
  check_rejected(client().request("PUT", "/todo/" + c.id + "/done", std::string{"{}"} + '\0' + "x",
                                  json_type),
                 400, before);
  CHECK(history(c.id).size() == 1);
}

TEST_CASE("a number beyond a 64-bit float, even in an unknown field, is a 400 saying so",
          "[e2e][todo][validation]") {
  auto before = head();
  for (std::string body : std::vector<std::string>{R"({"description":"big","x":1e999999})",
                           R"({"description":"big","x":-1e400})",
                           R"({"description":"big","x":)" + std::string(400, '9') + "}"}) {
    INFO("body `" << body.substr(0, 60) << "`");
    auto r = client().request("POST", "/todo", body, json_type);
    check_rejected(r, 400, before);
    CHECK(r.json_body().value("detail", std::string{}).find("range") != std::string::npos);
  }
  // Large but in range: ignored like any unknown field.
  check_write(client().request("POST", "/todo", R"({"description":"big","x":1e300})", json_type),
              201);
}

TEST_CASE("a JSON body that is not an object is a 400", "[e2e][todo][validation]") {
  auto c = create("array target");
  auto before = head();
  for (std::string body : {R"([{"description": "abc"}])", R"("abc")", "42", "null", "true"}) {
    INFO("body `" << body << "`");
    check_rejected(client().request("POST", "/todo", body, json_type), 400, before);
    auto arr = "[{\"id\":\"" + c.id + "\",\"description\":\"abc\"}]";
    check_rejected(client().request("PUT", "/todo/change-description", arr, json_type), 400,
                   before);
  }
}

TEST_CASE("a body with invalid UTF-8 is a 400", "[e2e][todo][validation]") {
  auto c = create("utf-8 target");
  auto before = head();
  for (std::string body : {std::string{"{\"description\":\"ab\xff\xfe\"}"},
                           std::string{"{\"description\":\"caf\xc3\"}"},
                           std::string{"{\"description\":\"ok text\",\"x\":\"\xed\xa0\x80\"}"},
                           std::string{"{\"description\":\"overlong \xc0\xaf\"}"}}) {
    INFO("body of " << body.size() << " bytes");
    check_rejected(client().request("POST", "/todo", body, json_type), 400, before);
  }
  std::string bad_change =
    "{\"id\":\"" + c.id + "\",\"description\":\"bad \xff\xff bytes\"}";
  check_rejected(client().request("PUT", "/todo/change-description", bad_change, json_type), 400,
                 before);
}

TEST_CASE("a body without Content-Type or with a non-JSON type is a 415",
          "[e2e][todo][validation]") {
  auto c = create("media type target");
  auto before = head();
  std::string create_body = R"({"description":"typed wrong"})";
  std::string change_body = R"({"id":")" + c.id + R"(","description":"typed wrong"})";
  for (auto type : {std::optional<std::string>{}, std::optional<std::string>{"text/plain"},
                    std::optional<std::string>{"application/x-www-form-urlencoded"},
                    std::optional<std::string>{"application/jsonx"},
                    std::optional<std::string>{"text/json"},
                    // JSON is UTF-8: a body declared in another charset is not read as one.
                    std::optional<std::string>{"application/json; charset=iso-8859-1"},
                    std::optional<std::string>{"application/json; foo=1; charset=\"latin1\""}}) {
    INFO("Content-Type " << type.value_or("(none)"));
    header_list h;
    if (type)
      h.push_back({"Content-Type", *type});
    check_rejected(client().request("POST", "/todo", create_body, h), 415, before);
    check_rejected(client().request("PUT", "/todo/change-description", change_body, h), 415,
                   before);
  }
}

TEST_CASE("a body with Content-Type given on two lines is a 400 naming the field, even when "
          "both lines say application/json",
          "[e2e][todo][validation]") {
  auto c = create("two content types target");
  auto before = head();
  std::string create_body = R"({"description":"typed twice"})";
  std::string change_body = R"({"id":")" + c.id + R"(","description":"typed twice"})";
  for (auto second : {"application/json", "text/plain"}) {
    INFO("second Content-Type " << second);
    header_list h{{"Content-Type", "application/json"}, {"Content-Type", second}};
    for (auto r : {client().request("POST", "/todo", create_body, h),
                   client().request("PUT", "/todo/change-description", change_body, h)}) {
      check_rejected(r, 400, before);
      CHECK(r.json_body()["detail"] == "Content-Type given more than once");
      CHECK(r.json_body()["errors"][0]["field"] == "Content-Type");
    }
  }
}

TEST_CASE("Content-Type application/json with parameters or in another letter case is accepted",
          "[e2e][todo][validation]") {
  for (auto type : {"application/json; charset=utf-8", "application/json;charset=UTF-8",
                    "Application/JSON", "application/json; charset=\"utf-8\"",
                    "application/json; version=1"}) {
    INFO("Content-Type " << type);
    auto r = client().request("POST", "/todo", R"({"description":"typed right"})",
                              {{"Content-Type", type}});
    auto c = check_write(r, 201);
    auto u = client().request("PUT", "/todo/change-description",
                              R"({"id":")" + c.id + R"(","description":"typed right too"})",
                              {{"Content-Type", type}});
    check_write(u, 200);
  }
}

TEST_CASE("a body of exactly 65536 bytes is accepted and 65537 bytes is a 413",
          "[e2e][todo][validation]") {
  auto exact = padded_create_body(65536);
  auto ok = client().request("POST", "/todo", exact, json_type);
  auto c = check_write(ok, 201);
  CHECK(history(c.id)[0]["snapshot"]["description"] == "exactly sized body");

  auto before = head();
  auto over = padded_create_body(65537);
  check_rejected(client().request("POST", "/todo", over, json_type), 413, before);
  // Declared too large before any body byte is sent.
  auto raw = raw_exchange(shared_server().port(),
                          "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: 1000000\r\n\r\n");
  check_rejected(parse_response(raw), 413, before);
  CHECK(raw.rfind("HTTP/1.1 413 Content Too Large\r\n", 0) == 0); // RFC 9110 §15.5.14
  // A chunked body over the limit too.
  std::string chunked = "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n";
  chunked += one_chunk(over);
  check_rejected(parse_response(raw_exchange(shared_server().port(), chunked)), 413, before);
  // The answer to a HEAD has no body, also when it is a 413 (RFC 9110 §9.3.2).
  auto head_raw = raw_exchange(
    shared_server().port(), "HEAD /todo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
  INFO("answer to the HEAD: " << head_raw);
  CHECK(head_raw.rfind("HTTP/1.1 413 ", 0) == 0);
  auto end_of_head = head_raw.find("\r\n\r\n");
  REQUIRE(end_of_head != std::string::npos);
  CHECK(head_raw.size() == end_of_head + 4);
}

TEST_CASE("after a 413 the rest of the body is read and dropped before the close, so the "
          "client gets the answer and a clean end of stream, not a reset",
          "[e2e][todo][validation]") {
  int fd = connect_loopback(shared_server().port());
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto send_all = [&](const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  };
  // A body declared far over the limit, sent with the header as a client
  // that does not wait for an answer would: the 413 comes after the header,
  // and most of this megabyte is still unread when it does.
  CHECK(send_all("POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 3000000\r\n\r\n"
                 + std::string(1024 * 1024, 'x')));
  std::string in;
  char buf[4096];
  auto whole_answer = [&] { // the head, and as many body bytes as it declares
    auto end = in.find("\r\n\r\n");
    auto length = in.find("Content-Length: ");
    return end != std::string::npos && length != std::string::npos && length < end
           && in.size() >= end + 4 + std::stoul(in.substr(length + 16));
  };
  while (!whole_answer()) {
    auto n = ::recv(fd, buf, sizeof buf, 0);
    REQUIRE(n > 0);
    in.append(buf, static_cast<size_t>(n));
  }
  check_problem(parse_response(in), 413);
  // The client goes on sending the rest, then ends its side.
  CHECK(send_all(std::string(1024 * 1024, 'x')));
  ::shutdown(fd, SHUT_WR);
  // What follows the answer is a clean end of stream, not ECONNRESET.
  ssize_t n = 0;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
  }
  int err = errno;
  ::close(fd);
  INFO("recv: " << n << " " << (n < 0 ? std::strerror(err) : ""));
  CHECK(n == 0);
}

TEST_CASE("a request target longer than the 16 KiB header limit is a 414, header fields past it "
          "a 431; both problems, and nothing is appended",
          "[e2e][todo][validation]") {
  auto before = head();
  auto long_target = "GET /todo/" + std::string(100 * 1024, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n";
  auto uri = parse_response(raw_exchange(shared_server().port(), long_target));
  check_rejected(uri, 414, before);
  CHECK(uri.json_body()["title"] == "URI Too Long");
  CHECK(uri.header("Connection").value_or("") == "close");
  // A target just under the limit is read whole: an id that is no UUID, a 404.
  auto just_under = "GET /todo/" + std::string(15 * 1024, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n";
  check_rejected(parse_response(raw_exchange(shared_server().port(), just_under)), 404, before);
  auto big_headers = std::string{"GET /todo HTTP/1.1\r\nHost: x\r\n"};
  for (int i = 0; i < 40; ++i)
    big_headers += "X-Filler-" + std::to_string(i) + ": " + std::string(1000, 'b') + "\r\n";
  big_headers += "\r\n";
  auto fields = parse_response(raw_exchange(shared_server().port(), big_headers));
  check_rejected(fields, 431, before);
  CHECK(fields.json_body()["title"] == "Request Header Fields Too Large");
  // One field line past the limit is a header too large, not a target.
  auto one_big = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n";
  check_rejected(parse_response(raw_exchange(shared_server().port(), one_big)), 431, before);
  // A long target whose line ends within the limit, with fields that take
  // the whole past it: the fields are too large, not the target.
  for (size_t target : {1000, 8000}) {
    auto both = "GET /healthz?x=" + std::string(target, 'q') + " HTTP/1.1\r\nHost: x\r\nX-A: "
                + std::string(16 * 1024 - target, 'a') + "\r\n\r\n";
    INFO("target of " << target << " bytes");
    check_rejected(parse_response(raw_exchange(shared_server().port(), both)), 431, before);
  }
  // The limit is inclusive and counts the whole header section, request
  // line and final empty line included, however short the request line.
  for (std::string line : {std::string{"GET /healthz HTTP/1.1\r\n"},
                           "GET /healthz?" + std::string(9000, 'q') + " HTTP/1.1\r\n"}) {
    auto section = [&](size_t size) {
      auto start = line + "Host: x\r\nX-Pad: ";
      return start + std::string(size - start.size() - 4, 'p') + "\r\n\r\n";
    };
    INFO("request line of " << line.size() << " bytes");
    REQUIRE(section(16 * 1024).size() == 16 * 1024);
    auto at_limit = parse_response(raw_exchange(shared_server().port(), section(16 * 1024)));
    CHECK(at_limit.status == 200);
    check_rejected(parse_response(raw_exchange(shared_server().port(), section(16 * 1024 + 1))),
                   431, before);
  }
}

TEST_CASE("a request target with a fragment (`#`) is a 400: clients never send one",
          "[e2e][todo][validation]") {
  auto before = head();
  for (std::string target : {"/healthz#x", "/todo#", "/todo?limit=1#top"}) {
    INFO(target);
    auto r = parse_response(
      raw_exchange(shared_server().port(), "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    check_rejected(r, 400, before);
    CHECK(r.json_body()["detail"] == "a request target has no fragment (`#`)");
  }
  // An encoded `#` is an ordinary character of a segment.
  check_problem(client().get("/todo/%23"), 404);
}

TEST_CASE("a request target with a raw byte outside ASCII is a 400; percent-encoded UTF-8 is "
          "read as such",
          "[e2e][todo][validation]") {
  auto before = head();
  for (std::string target : {"/todo/\xc3\xa9", "/nope\xff", "/todo?status=Don\xc3\xa9", "/\x7f"}) {
    INFO(target);
    auto r = parse_response(
      raw_exchange(shared_server().port(), "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    check_rejected(r, 400, before);
  }
  check_problem(client().get("/todo/%C3%A9"), 404); // no such todo, but a readable path
}

TEST_CASE("a query parameter given twice is a 400 naming it; an encoded slash in a path is "
          "part of its segment, not a separator",
          "[e2e][todo][validation]") {
  auto twice = client().get("/todo?status=Done&status=Created");
  check_problem(twice, 400);
  CHECK(twice.json_body()["detail"].get<std::string>().find("`status` given more than once")
        != std::string::npos);
  CHECK(twice.json_body()["errors"]
        == json::parse(R"([{"field":"status","messages":["is given more than once"]}])"));
  check_problem(client().get("/streams/$all?from=2&from=3"), 400);
  auto a = check_write(client().post_json("/todo", {{"description", "slash test"}}), 201);
  CHECK(client().get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)).status == 200);
  check_problem(client().get("/todo%2F" + a.id), 404);
  check_problem(client().get("/todo%2f" + a.id + "%2Fhistory"), 404);
}

TEST_CASE("numbers in query parameters and Last-Event-ID may carry leading zeros",
          "[e2e][todo][validation]") {
  auto a = check_write(client().post_json("/todo", {{"description", "zeros first"}}), 201);
  auto zeros = std::string(30, '0');
  auto page = client().get("/streams/$all?from=" + zeros + std::to_string(a.position)
                           + "&limit=" + zeros + "1");
  REQUIRE(page.status == 200);
  auto items = page.json_body()["items"];
  REQUIRE(items.size() == 1);
  CHECK(items[0]["position"] == a.position);
  auto stream = client().get("/streams/todo-" + a.id + "?from=" + zeros + "1");
  REQUIRE(stream.status == 200);
  CHECK(stream.json_body()["items"].size() == 1);
}

TEST_CASE("an error answer after a HEAD on the same connection has its body",
          "[e2e][todo][validation]") {
  http_client c{shared_server().port()};
  CHECK(c.request("HEAD", "/healthz", std::nullopt).status == 200);
  auto big = c.request("POST", "/todo", std::string(70000, ' '), json_type);
  CHECK(c.connections() == 1); // on the connection of the HEAD
  check_problem(big, 413);
  CHECK(big.json_body()["status"] == 413);
}

TEST_CASE("a malformed HTTP request is a 400 problem", "[e2e][todo][validation]") {
  auto before = head();
  auto raw = raw_exchange(shared_server().port(), "THIS IS NOT HTTP\r\n\r\n");
  INFO("raw answer: " << raw);
  auto r = parse_response(raw);
  check_rejected(r, 400, before);
}

TEST_CASE("a well-formed HTTP version other than 1.0 and 1.1 is a 505 naming it; a malformed "
          "version a 400; neither appends",
          "[e2e][todo][validation]") {
  auto before = head();
  for (std::string version : {"HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.1"}) {
    INFO(version);
    auto r = parse_response(raw_exchange(
        shared_server().port(), "POST /todo " + version
                                    + "\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      "Content-Length: 2\r\n\r\n{}"));
    check_rejected(r, 505, before);
    CHECK(r.json_body()["title"] == "HTTP Version Not Supported");
    CHECK(r.json_body()["detail"].get<std::string>().find(version) != std::string::npos);
    CHECK(r.header("Connection").value_or("") == "close");
  }
  for (std::string version : {"HTTP/1.10", "HTTP/a.b", "HTTX/1.1", "HTTP/11"}) {
    INFO(version);
    auto r = parse_response(
        raw_exchange(shared_server().port(), "GET /healthz " + version + "\r\nHost: x\r\n\r\n"));
    check_rejected(r, 400, before);
  }
  // Beast calls whatever is wrong after the target a bad version: with 1.1
  // (two spaces before it, a bare LF after it) that is a malformed line.
  for (std::string line : {"GET /healthz  HTTP/1.1\r\n", "GET /healthz HTTP/1.1\n"}) {
    INFO(line);
    auto r = parse_response(raw_exchange(shared_server().port(), line + "Host: x\r\n\r\n"));
    check_rejected(r, 400, before);
  }
  // Still served over HTTP/1.0 and 1.1.
  for (std::string version : {"HTTP/1.0", "HTTP/1.1"}) {
    auto r = parse_response(
        raw_exchange(shared_server().port(),
                     "GET /healthz " + version + "\r\nHost: x\r\nConnection: close\r\n\r\n"));
    CHECK(r.status == 200);
  }
}

TEST_CASE("HTTP/1.1 framing rules: no Host is a 400, an unknown transfer coding a 501, a "
          "content coding a 415, each appending nothing",
          "[e2e][todo][validation]") {
  auto before = head();
  const std::string body = R"({"description":"framed"})";
  const std::string length = "Content-Length: " + std::to_string(body.size()) + "\r\n";
  auto no_host = raw_exchange(shared_server().port(),
                              "POST /todo HTTP/1.1\r\nContent-Type: application/json\r\n"
                                + length + "\r\n" + body);
  check_rejected(parse_response(no_host), 400, before);
  auto two_hosts = raw_exchange(shared_server().port(),
                                "POST /todo HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
                                "Content-Type: application/json\r\n" + length + "\r\n" + body);
  check_rejected(parse_response(two_hosts), 400, before);
  auto gzip_te = raw_exchange(shared_server().port(),
                              "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Transfer-Encoding: gzip, chunked\r\n\r\n"
                                + one_chunk(body));
  auto not_implemented = parse_response(gzip_te);
  check_rejected(not_implemented, 501, before);
  CHECK(not_implemented.json_body().value("title", std::string{}) == "Not Implemented");
  auto gzip_ce = client().request("POST", "/todo", body,
                                  {{"Content-Type", "application/json"},
                                   {"Content-Encoding", "gzip"}});
  check_rejected(gzip_ce, 415, before);
  CHECK(gzip_ce.header("Accept-Encoding") == "identity"); // RFC 9110 §15.5.16
  // `identity` is no coding at all.
  auto identity = client().request("POST", "/todo", body,
                                   {{"Content-Type", "application/json"},
                                    {"Content-Encoding", "identity"}});
  auto created = check_write(identity, 201);
  // Without a body there is nothing coded: the field is no reason to refuse.
  CHECK(client().get("/healthz", {{"Content-Encoding", "gzip"}}).status == 200);
  check_write(client().put("/todo/" + created.id + "/done", {{"Content-Encoding", "gzip"}}), 200);
}

TEST_CASE("a request whose body framing cannot be trusted is a 400 and the connection closes "
          "unread: chunked named twice or not last, a Transfer-Encoding in HTTP/1.0, both "
          "Transfer-Encoding and Content-Length (in any order, saying so)",
          "[e2e][todo][validation]") {
  auto before = head();
  const std::string body = R"({"description":"smuggled?"})";
  const std::string chunks = one_chunk(body);
  const std::string length = "Content-Length: " + std::to_string(body.size()) + "\r\n";
  // Each followed by a second request on the same connection: had the body
  // been taken for none, its bytes would have been read as that request.
  const std::string next = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string both = "both Transfer-Encoding and Content-Length";
  // The header fields after the method and target, and what the detail says.
  for (auto [head_fields, detail] : std::vector<std::pair<std::string, std::string>>{
         {"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n", ""},
         {"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", ""},
         {"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n", ""},
         {"HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", ""},
         {"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + length, both},
         {"HTTP/1.1\r\nHost: x\r\n" + length + "transfer-encoding: chunked\r\n", both},
         {"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n" + length, both}}) {
    INFO(head_fields);
    auto raw = raw_exchange(shared_server().port(),
                            "POST /todo " + head_fields + "Content-Type: application/json\r\n\r\n"
                              + chunks + next,
                            5000ms, true);
    auto r = parse_response(raw);
    check_rejected(r, 400, before);
    if (!detail.empty())
      CHECK(r.json_body().value("detail", "").find(detail) != std::string::npos);
    CHECK(r.header("Connection").value_or("") == "close");
    CHECK(raw.find("HTTP/1.1 ", 1) == std::string::npos); // one answer, then the close
  }
}

TEST_CASE("a chunked body whose next chunk-size line is not one is a 400 and the connection "
          "closes: the rest of the body is never read as a request, though it begins with CRLF",
          "[e2e][todo][validation]") {
  auto victim = create("never done by a smuggled request");
  auto before = head();
  // One whole chunk, then a request line where the next chunk's size should
  // be: the bytes left unread begin with the chunk's closing CRLF.
  const std::string data = R"({"description":"smuggled"})";
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%zx\r\n", data.size());
  auto raw = raw_exchange(
    shared_server().port(),
    "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: chunked\r\n\r\n" + std::string{size_line} + data
      + "\r\nPUT /todo/" + victim.id + "/done HTTP/1.1\r\nHost: x\r\n\r\n",
    5000ms, true);
  auto r = parse_response(raw);
  check_rejected(r, 400, before);
  CHECK(raw.find("HTTP/1.1 ", 1) == std::string::npos); // one answer, then the close
  CHECK(history(victim.id).size() == 1);
}

TEST_CASE("a chunked body's trailer fields are not the request's: an If-Match, Content-Type, "
          "Idempotency-Key or Host in the trailer changes nothing",
          "[e2e][todo][validation]") {
  auto t = create("trailer fields are ignored");
  auto chunked = [&](const std::string& request_line, const std::string& body,
                     const std::string& trailer) {
    char size_line[32];
    std::snprintf(size_line, sizeof size_line, "%zx\r\n", body.size());
    return parse_response(raw_exchange(
      shared_server().port(), request_line + " HTTP/1.1\r\nHost: x\r\n"
                                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                + size_line + body + "\r\n0\r\n" + trailer + "\r\n"));
  };
  auto changed = chunked("PUT /todo/change-description",
                         R"({"id":")" + t.id + R"(","description":"If-Match in the trailer"})",
                         "If-Match: \"999\"\r\nContent-Type: text/plain\r\nHost: y\r\n");
  CHECK(check_write(changed, 200).version == 2);
  // An Idempotency-Key only in the trailer makes two creates, not one.
  auto first = chunked("POST /todo", R"({"description":"keyed in the trailer"})",
                       "Idempotency-Key: trailer-key\r\n");
  auto second = chunked("POST /todo", R"({"description":"keyed in the trailer"})",
                        "Idempotency-Key: trailer-key\r\n");
  CHECK(check_write(first, 201).id != check_write(second, 201).id);
}

TEST_CASE("a chunked body whose chunk-size line ends in a bare LF is a 400 at once (RFC 9112 "
          "§7.1), not a wait for the read timeout; line feeds inside chunk data are data",
          "[e2e][todo][validation]") {
  auto before = head();
  auto started = std::chrono::steady_clock::now();
  auto raw = raw_exchange(shared_server().port(),
                          "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"
                          "1a\n{\"description\":\"bare LF\"}\n0\n\n",
                          20000ms);
  // Well within the 30 s read timeout of the shared server.
  CHECK(std::chrono::steady_clock::now() - started < 15s);
  check_rejected(parse_response(raw), 400, before);

  // Pretty-printed JSON in chunks, also behind `Expect: 100-continue` (the
  // body is then read after the interim answer).
  const std::string pretty = "{\n  \"description\": \"pretty\\nprinted\"\n}\n";
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%zx\r\n", pretty.size());
  for (std::string expect : {"", "Expect: 100-continue\r\n"}) {
    INFO(expect);
    auto ok = raw_exchange(shared_server().port(),
                           "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Transfer-Encoding: chunked\r\n" + expect + "\r\n" + size_line + pretty
                             + "\r\n0\r\n\r\n");
    auto final_answer = ok.find("HTTP/1.1 201 ");
    REQUIRE(final_answer != std::string::npos);
    auto c = check_write(parse_response(ok.substr(final_answer)), 201);
    CHECK(history(c.id)[0]["snapshot"]["description"] == "pretty\nprinted");
  }

  // The same arriving a few bytes at a time: the body is read part by part,
  // each new part of a pending chunk-size line checked.
  const std::string head_section = "POST /todo HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";
  const std::string data = R"({"description":"trickled"})";
  char hex[16];
  std::snprintf(hex, sizeof hex, "%zx", data.size());
  auto trickled = raw_exchange_in_pieces(
    shared_server().port(), {head_section, hex, "\r", "\n" + data, "\r\n0", "\r\n\r", "\n"}, 50ms);
  auto t = check_write(parse_response(trickled), 201);
  CHECK(history(t.id)[0]["snapshot"]["description"] == "trickled");
  auto before_trickle = head();
  auto bare = raw_exchange_in_pieces(shared_server().port(), {head_section, hex, "\n" + data}, 50ms,
                                     15000ms);
  check_rejected(parse_response(bare), 400, before_trickle);
}

TEST_CASE("empty lines before a request line are ignored, a few of them; a request target that "
          "does not begin with / is a 400; HTTP/1.0 keep-alive answers say so",
          "[e2e][todo][validation]") {
  auto port = shared_server().port();
  auto answers = [](const std::string& raw) {
    std::vector<unsigned> statuses;
    for (auto at = raw.find("HTTP/1.1 "); at != std::string::npos; at = raw.find("HTTP/1.1 ", at + 1))
      statuses.push_back(static_cast<unsigned>(std::stoul(raw.substr(at + 9, 3))));
    return statuses;
  };
  const std::string body = R"({"description":"then a CRLF"})";
  const std::string last = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  // A CRLF after a body (RFC 9112 §2.2: some clients send one), or before
  // the first request of a connection.
  auto after_body = raw_exchange(port,
                                 "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n"
                                   + body + "\r\n" + last,
                                 5000ms, true);
  CHECK(answers(after_body) == std::vector<unsigned>{201, 200});
  CHECK(answers(raw_exchange(port, "\r\n\r\n\n" + last, 5000ms, true))
        == std::vector<unsigned>{200});
  // Not endlessly many.
  auto flood = raw_exchange(port, std::string(40, '\n') + last, 5000ms, true);
  CHECK(answers(flood) == std::vector<unsigned>{400});

  auto relative = parse_response(raw_exchange(port, "GET healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  check_problem(relative, 400);
  CHECK(relative.json_body()["detail"].get<std::string>().find("begins with `/`")
        != std::string::npos);

  // HTTP/1.0 closes unless told otherwise: a kept connection is announced.
  auto kept = parse_response(
      raw_exchange(port, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  CHECK(kept.status == 200);
  CHECK(kept.header("Connection") == "keep-alive");
  auto closed = parse_response(raw_exchange(port, "GET /healthz HTTP/1.0\r\n\r\n"));
  CHECK(closed.header("Connection") == "close");
}

TEST_CASE("a body naming a member twice is a 400 naming it, nothing appended: which one would "
          "count is a guess",
          "[e2e][todo][validation]") {
  auto c = create("named once");
  auto other = create("the other one");
  auto before = head();
  const header_list json_type{{"Content-Type", "application/json"}};
  // Compact (read without the parser) and spaced (read by it).
  for (std::string b : {R"({"description":"ab","description":"cd"})",
                        R"({ "description": "ab", "description": "cd" })",
                        R"({"description":"ab","x":1,"description":"cd"})"}) {
    INFO(b);
    auto r = client().request("POST", "/todo", b, json_type);
    check_rejected(r, 400, before);
    CHECK(r.json_body()["errors"][0]["field"] == "description");
  }
  auto r = client().request("PUT", "/todo/change-description",
                            R"({"id":")" + c.id + R"(","id":")" + other.id
                              + R"(","description":"which one?"})",
                            json_type);
  check_rejected(r, 400, before);
  CHECK(r.json_body()["errors"][0]["field"] == "id");
  // Inside a member eventsd ignores, names are its owner's business; so is a
  // body of a write that takes none.
  check_write(client().request("POST", "/todo", R"({"description":"ab","x":{"a":1,"a":2}})",
                               json_type),
              201);
  check_write(client().request("PUT", "/todo/" + c.id + "/done", R"({"a":1,"a":2})", json_type),
              200);
}

TEST_CASE("the writes that take no body ignore one, unless it says it is JSON and is not "
          "(400, nothing appended); a malformed path id is a 404 first",
          "[e2e][todo][validation]") {
  auto c = create("no body expected");
  auto first_event = history(c.id)[0]["id"].get<std::string>();
  const header_list json_type{{"Content-Type", "application/json"}};
  for (std::string path : {"/todo/" + c.id + "/put-in-progress", "/todo/" + c.id + "/done",
                           "/todo/" + c.id + "/undo-to/" + first_event}) {
    INFO("PUT " << path);
    auto before = head();
    for (std::string broken : {"{\"x\":\"\xff\"}", "{\"status\":", "not json"})
      check_rejected(client().request("PUT", path, broken, json_type), 400, before);
    // As in every JSON body eventsd reads (POST /todo's too).
    auto huge = client().request("PUT", path, std::string{"{\"x\":1e400}"}, json_type);
    check_rejected(huge, 400, before);
    CHECK(huge.json_body().value("detail", "").find("beyond the range of a 64-bit float")
          != std::string::npos);
    // What clients send by habit: curl -d (a form type), fetch (text/plain),
    // an empty object, JSON null.
    check_write(client().request("PUT", path, std::string{"{}"},
                                 {{"Content-Type", "application/x-www-form-urlencoded"}}),
                200);
    check_write(client().request("PUT", path, std::string{"{}"},
                                 {{"Content-Type", "text/plain;charset=UTF-8"}}),
                200);
    check_write(client().request("PUT", path, std::string{"{\"status\":\"Created\"}"}, json_type),
                200);
    check_write(client().request("PUT", path, std::string{"null"}, json_type), 200);
    CHECK(head() == before + 4);
    // The path is checked before the body.
    check_rejected(client().request("PUT", "/todo/not-a-uuid/done", std::string{"{"}, json_type),
                   404, head());
  }
  // The last write was the undo to the first event: the ignored field changed nothing.
  auto last = history(c.id).back()["snapshot"];
  CHECK(last["status"] == "Created");
  CHECK(last["version"] == 13);
}

namespace {

/// A `POST /todo` whose `Expect` field is `expect`, sent raw: the header, then
/// `sent_body` (empty as a client waiting for 100 Continue sends it; the
/// declared length is `body`'s).
std::string expecting(const std::string& version, const std::string& expect,
                      const std::string& body, const std::string& sent_body) {
  return "POST /todo HTTP/" + version + "\r\nHost: x\r\nContent-Type: application/json\r\n"
         + "Expect: " + expect + "\r\nContent-Length: " + std::to_string(body.size())
         + "\r\n\r\n" + sent_body;
}

} // namespace

TEST_CASE("a request with Expect: 100-continue gets 100 Continue before its body is sent, "
          "then its answer",
          "[e2e][todo][validation]") {
  const std::string body = R"({"description":"sent after 100"})";
  const std::string head_part = "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                "Expect: 100-continue\r\nContent-Length: "
                                + std::to_string(body.size()) + "\r\n\r\n";
  auto before = head();
  // Only the header: the interim answer comes while the body is still awaited.
  auto interim = raw_exchange(shared_server().port(), head_part, 1500ms);
  INFO("answer to the header alone: " << interim);
  CHECK(interim.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  CHECK(head() == before);
  // Header and body: 100 Continue, then the final answer on the same connection.
  auto full = raw_exchange(shared_server().port(), head_part + body + "", 1500ms);
  INFO("answer to header and body: " << full);
  REQUIRE(full.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  auto final_answer = parse_response(full.substr(std::string{"HTTP/1.1 100 Continue\r\n\r\n"}.size()));
  check_write(final_answer, 201);
  CHECK(head() == before + 1);
  // HTTP/1.0 knows no interim answers: the expectation is ignored.
  auto old_http =
    raw_exchange(shared_server().port(), expecting("1.0", "100-continue", body, body), 1500ms);
  INFO("HTTP/1.0 answer: " << old_http);
  CHECK(old_http.rfind("HTTP/1.1 201 ", 0) == 0);
  CHECK(head() == before + 2);
}

TEST_CASE("a request expecting 100-continue that its header already refuses gets the refusal "
          "instead, before its body is sent, and the connection closes",
          "[e2e][todo][validation]") {
  const std::string body = R"({"description":"never sent"})";
  auto header_only = [&](const std::string& request_line, const std::string& fields) {
    return request_line + "\r\nHost: x\r\nExpect: 100-continue\r\n" + fields
           + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  };
  struct refused_case {
    std::string what, request_line, fields;
    unsigned status;
  };
  auto port = shared_server().port();
  auto before = head();
  for (auto& c : std::vector<refused_case>{
         {"no route", "POST /nowhere HTTP/1.1", "Content-Type: application/json\r\n", 404},
         {"a method the path does not take", "DELETE /todo HTTP/1.1",
          "Content-Type: application/json\r\n", 405},
         {"a body that is not JSON", "POST /todo HTTP/1.1", "Content-Type: text/plain\r\n", 415},
         {"JSON in another charset", "PUT /todo/change-description HTTP/1.1",
          "Content-Type: application/json; charset=latin1\r\n", 415},
         {"a malformed target", "POST /todo?%zz HTTP/1.1", "Content-Type: application/json\r\n",
          400},
         {"a method HTTP does not define", "FROB /todo HTTP/1.1",
          "Content-Type: application/json\r\n", 501},
       }) {
    CAPTURE(c.what);
    // Only the header is sent: the final answer must come without the body.
    auto answer = raw_exchange(port, header_only(c.request_line, c.fields), 1500ms);
    INFO("answer: " << answer);
    CHECK(answer.find("100 Continue") == std::string::npos);
    auto r = parse_response(answer);
    check_rejected(r, c.status, before);
    CHECK(r.header("Connection") == "close");
    if (c.status == 405)
      CHECK(r.header("Allow") == "POST, GET, HEAD, OPTIONS");
  }
  // A route that takes the body still asks for it first, with any Content-Type
  // its handler would accept.
  auto met = raw_exchange(port,
                          header_only("POST /todo HTTP/1.1",
                                      "Content-Type: application/json; charset=UTF-8\r\n")
                            + body,
                          1500ms);
  REQUIRE(met.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  check_write(parse_response(met.substr(std::string{"HTTP/1.1 100 Continue\r\n\r\n"}.size())), 201);
  CHECK(head() == before + 1);
}

TEST_CASE("an expectation other than 100-continue is refused with 417 before anything is "
          "written, and the connection closes",
          "[e2e][todo][validation]") {
  const std::string body = R"({"description":"never written"})";
  auto port = shared_server().port();
  auto before = head();
  auto unknown = raw_exchange(port, expecting("1.1", "200-ok", body, ""), 1500ms);
  INFO("answer: " << unknown);
  auto refused = parse_response(unknown);
  check_rejected(refused, 417, before);
  CHECK(refused.json_body().value("type", std::string{}) == "urn:eventsd:problem:expectation-failed");
  CHECK(refused.json_body().value("detail", std::string{}).find("200-ok") != std::string::npos);
  CHECK(refused.header("Connection") == "close");
  // One unknown member in a list is enough; a list of 100-continue alone is
  // met (in any letter case), and an empty field asks for nothing.
  auto listed = raw_exchange(port, expecting("1.1", "100-continue, x-fast", body, body), 1500ms);
  check_rejected(parse_response(listed), 417, before);
  auto met = raw_exchange(port, expecting("1.1", "100-Continue ,", body, body), 1500ms);
  INFO("answer to a listed 100-continue: " << met);
  REQUIRE(met.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  check_write(parse_response(met.substr(std::string{"HTTP/1.1 100 Continue\r\n\r\n"}.size())), 201);
  check_write(parse_response(raw_exchange(port, expecting("1.1", "", body, body), 1500ms)), 201);
  CHECK(head() == before + 2);
  // HTTP/1.0 ignores expectations, known or not.
  auto old_http = raw_exchange(port, expecting("1.0", "200-ok", body, body), 1500ms);
  CHECK(old_http.rfind("HTTP/1.1 201 ", 0) == 0);
  CHECK(head() == before + 3);
}

TEST_CASE("OPTIONS answers a path's methods in Allow; a 405's Allow names only methods that "
          "path serves",
          "[e2e][todo][routes]") {
  auto o = client().request("OPTIONS", "/todo", std::nullopt);
  CHECK(o.status == 204);
  CHECK(o.header("Allow") == "POST, GET, HEAD, OPTIONS");
  CHECK_FALSE(o.header("Content-Length"));
  CHECK(o.body.empty());
  CHECK(client().request("OPTIONS", "/no/such/route", std::nullopt).status == 404);
  // `change-description` is no todo id, so GET /todo/{id} is not among its methods.
  auto d = client().request("DELETE", "/todo/change-description", std::nullopt);
  check_problem(d, 405);
  CHECK(d.header("Allow") == "PUT, OPTIONS");
  auto t = client().request("DELETE", "/todo/" + random_uuid(), std::nullopt);
  check_problem(t, 405);
  CHECK(t.header("Allow") == "GET, HEAD, OPTIONS");
  // `OPTIONS *`: the server's own methods; `*` names nothing else.
  auto server = parse_response(raw_exchange(shared_server().port(),
                                            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"));
  CHECK(server.status == 204);
  CHECK(server.header("Allow") == "POST, PUT, GET, HEAD, OPTIONS");
  check_problem(parse_response(raw_exchange(shared_server().port(),
                                            "GET * HTTP/1.1\r\nHost: x\r\n\r\n")),
                400);
}

TEST_CASE("a method HTTP does not define is a 501 on any path; method names are case-sensitive",
          "[e2e][todo][routes]") {
  auto before = head();
  for (std::string method : {"FOO", "get", "Post"}) {
    INFO(method);
    for (std::string path : {"/todo", "/healthz", "/no/such/route"}) {
      auto r = parse_response(raw_exchange(shared_server().port(),
                                           method + " " + path + " HTTP/1.1\r\nHost: x\r\n"
                                             "Content-Length: 2\r\n\r\n{}"));
      check_rejected(r, 501, before);
      CHECK(r.json_body()["detail"] == "method `" + method + "` is not implemented");
    }
  }
  // A method HTTP defines that a path does not serve stays a 405.
  check_problem(client().request("DELETE", "/healthz", std::nullopt), 405);
}

TEST_CASE("a request target in absolute form is served like its origin form",
          "[e2e][todo][routes]") {
  auto raw = raw_exchange(shared_server().port(),
                          "GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Connection: close\r\n\r\n");
  auto r = parse_response(raw);
  INFO(raw);
  CHECK(r.status == 200);
}

TEST_CASE("every answer carries a Date header; HEAD of the subscription route answers its "
          "headers and other methods there are a 405",
          "[e2e][todo][routes]") {
  auto ok = client().get("/healthz");
  auto date = ok.header("Date");
  REQUIRE(date);
  CHECK(date->size() == 29); // IMF-fixdate, e.g. "Thu, 26 Nov 2026 21:59:24 GMT"
  CHECK(date->substr(26) == "GMT");
  CHECK(client().get("/no/such/route").header("Date"));

  http_client own{shared_server().port()};
  auto head_sse = own.request("HEAD", "/subscribe/$all", std::nullopt);
  CHECK(head_sse.status == 200);
  CHECK(head_sse.header("Content-Type").value_or("").rfind("text/event-stream", 0) == 0);
  CHECK(head_sse.body.empty());
  // The header fields GET sends, and no length: the GET's body ends with the connection.
  CHECK(head_sse.header("Cache-Control") == "no-cache");
  CHECK(head_sse.header("X-Accel-Buffering") == "no");
  CHECK_FALSE(head_sse.header("Content-Length"));
  CHECK(own.get("/healthz").status == 200);
  CHECK(own.connections() == 1); // the same connection still serves
  // HEAD answers what GET would: a malformed start is a 400 there too.
  CHECK(own.request("HEAD", "/subscribe/$all?from=-1", std::nullopt).status == 400);
  CHECK(own.request("HEAD", "/subscribe/$all", std::nullopt, {{"Last-Event-ID", "abc"}}).status
        == 400);
  auto post_sse = client().request("POST", "/subscribe/$all", std::string{"{}"},
                                   {{"Content-Type", "application/json"}});
  check_problem(post_sse, 405);
  CHECK(post_sse.header("Allow") == "GET, HEAD, OPTIONS");
}

// -- §4/§6 ids and routes ---------------------------------------------------------

TEST_CASE("a malformed UUID in a path is a 404", "[e2e][todo][routes]") {
  auto c = create("real todo");
  auto e1 = history(c.id)[0]["id"].get<std::string>();
  auto before = head();
  for (std::string bad : std::vector<std::string>{"not-a-uuid", "12345678-1234-1234-1234-12345678901",
                          "12345678-1234-1234-1234-1234567890123", "g2345678-1234-1234-1234-123456789012",
                          c.id + "0", "{" + c.id + "}"}) {
    INFO("id " << bad);
    check_problem(client().get("/todo/" + bad), 404);
    check_problem(client().get("/todo/" + bad + "/history"), 404);
    check_problem(client().get("/todo/" + bad + "/snapshot/" + e1), 404);
    check_problem(client().get("/todo/" + c.id + "/snapshot/" + bad), 404);
    check_rejected(client().put("/todo/" + bad + "/put-in-progress"), 404, before);
    check_rejected(client().put("/todo/" + bad + "/done"), 404, before);
    check_rejected(client().put("/todo/" + bad + "/undo-to/" + e1), 404, before);
    check_rejected(client().put("/todo/" + c.id + "/undo-to/" + bad), 404, before);
  }
}

TEST_CASE("an uppercase UUID in a path or body is accepted and answered in lowercase",
          "[e2e][todo][routes]") {
  auto c = create("case insensitive");
  auto up = upper(c.id);
  REQUIRE(up != c.id);
  auto e1 = upper(history(c.id)[0]["id"].get<std::string>());

  auto p = check_write(client().put("/todo/" + up + "/put-in-progress"), 200);
  CHECK(p.id == c.id);
  CHECK(p.version == 2);
  auto d = check_write(client().put("/todo/" + up + "/done"), 200);
  CHECK(d.id == c.id);
  auto ch = check_write(
    client().put_json("/todo/change-description", {{"id", up}, {"description", "renamed"}}), 200);
  CHECK(ch.id == c.id);
  CHECK(ch.version == 4);
  auto u = check_write(client().put("/todo/" + up + "/undo-to/" + e1), 200);
  CHECK(u.id == c.id);
  CHECK(u.version == 5);

  auto h = client().get("/todo/" + up + "/history");
  REQUIRE(h.status == 200);
  auto items = h.json_body()["items"];
  REQUIRE(items.size() == 5);
  for (auto& it : items) {
    CHECK(it["snapshot"]["id"] == c.id);
    CHECK(is_canonical_uuid(it["id"].get<std::string>()));
  }
  auto s = client().get("/todo/" + up + "/snapshot/" + e1);
  REQUIRE(s.status == 200);
  CHECK(s.json_body() == todo_state(c.id, "case insensitive", "Created", 1));

  auto r = client().get("/todo/" + up + "?minPosition=" + std::to_string(u.position));
  REQUIRE(r.status == 200);
  CHECK(r.json_body() == todo_state(c.id, "case insensitive", "Created", 5));

  // Mixed case too.
  auto mixed = c.id;
  for (size_t i = 0; i < mixed.size(); i += 2)
    mixed[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(mixed[i])));
  auto m = check_write(client().put("/todo/" + mixed + "/done"), 200);
  CHECK(m.id == c.id);
}

TEST_CASE("a malformed id in a change-description body is a 400 naming id",
          "[e2e][todo][validation]") {
  auto c = create("id validation");
  auto before = head();
  for (auto id : {json("not-a-uuid"), json(c.id + "0"), json(42), json(nullptr),
                  json(c.id.substr(0, 35))}) {
    INFO("id " << id.dump());
    auto r = client().put_json("/todo/change-description", {{"id", id}, {"description", "fine"}});
    check_rejected(r, 400, before);
    check_field_error(r, "id");
  }
  auto missing = client().put_json("/todo/change-description", {{"description", "fine"}});
  check_rejected(missing, 400, before);
  check_field_error(missing, "id");
  // Both fields wrong: both named.
  auto both = client().put_json("/todo/change-description", {{"id", "nope"}, {"description", 1}});
  check_rejected(both, 400, before);
  check_field_error(both, "id");
  check_field_error(both, "description");
}

TEST_CASE("an unknown route is a 404", "[e2e][todo][routes]") {
  auto c = create("route owner");
  for (std::string target : std::vector<std::string>{"/nope", "/todos", "/todo/" + c.id + "/unknown",
                             "/todo/" + c.id + "/done/again", "/todo/" + c.id + "/history/x",
                             "/", "/todo/" + c.id + "/undo-to"}) {
    INFO("GET " << target);
    check_problem(client().get(target), 404);
  }
  auto before = head();
  check_rejected(client().request("POST", "/nope", R"({"description":"abc"})", json_type), 404,
                 before);
  check_rejected(client().put("/todo/" + c.id + "/archive"), 404, before);
}

TEST_CASE("a wrong method on a known path is a 405 with Allow", "[e2e][todo][routes]") {
  auto c = create("method target");
  auto e1 = history(c.id)[0]["id"].get<std::string>();
  struct attempt {
    std::string method, target, allowed;
  };
  std::vector<attempt> attempts{
    {"DELETE", "/todo", "POST"},
    {"PUT", "/todo", "GET"},
    {"DELETE", "/todo/" + c.id, "GET"},
    {"POST", "/todo/" + c.id, "GET"},
    {"GET", "/todo/" + c.id + "/done", "PUT"},
    {"POST", "/todo/" + c.id + "/done", "PUT"},
    {"GET", "/todo/" + c.id + "/put-in-progress", "PUT"},
    {"DELETE", "/todo/" + c.id + "/undo-to/" + e1, "PUT"},
    {"POST", "/todo/" + c.id + "/history", "GET"},
    {"PUT", "/todo/" + c.id + "/snapshot/" + e1, "GET"},
    {"POST", "/todo/change-description", "PUT"},
    // The path of a PUT route, not a todo with a malformed id.
    {"GET", "/todo/change-description", "PUT"},
  };
  auto before = head();
  for (auto& a : attempts) {
    INFO(a.method << " " << a.target);
    auto r = client().request(a.method, a.target, std::nullopt);
    check_rejected(r, 405, before);
    auto allow = r.header("Allow");
    REQUIRE(allow);
    CHECK(allow->find(a.allowed) != std::string::npos);
    CHECK(allow->find(a.method) == std::string::npos);
  }
}

TEST_CASE("every error answer is application/problem+json with type, title, status and detail",
          "[e2e][todo][errors]") {
  auto c = create("error catalogue");
  auto future = std::to_string(c.position + 1000000);
  std::vector<std::pair<response, unsigned>> answers;
  answers.emplace_back(client().post_json("/todo", {{"description", "x"}}), 400);
  answers.emplace_back(client().get("/todo/" + random_uuid() + "/history"), 404);
  answers.emplace_back(client().get("/nowhere"), 404);
  answers.emplace_back(client().request("DELETE", "/todo"), 405);
  answers.emplace_back(client().put("/todo/" + c.id + "/done", {{"If-Match", "\"7\""}}), 412);
  answers.emplace_back(client().request("POST", "/todo", padded_create_body(70000), json_type),
                       413);
  answers.emplace_back(client().request("POST", "/todo", R"({"description":"abc"})"), 415);
  answers.emplace_back(client().get("/todo?minPosition=" + future + "&waitMs=100"), 503);
  auto key = random_uuid();
  create("conflict one", {{"Idempotency-Key", key}});
  answers.emplace_back(
    client().post_json("/todo", {{"description", "conflict two"}}, {{"Idempotency-Key", key}}),
    409);
  for (auto& [r, status] : answers) {
    INFO("expected " << status);
    check_problem(r, status);
  }
}

TEST_CASE("the client keeps one connection alive across requests and errors",
          "[e2e][todo][http]") {
  http_client c{shared_server().port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "keep alive"}}));
  CHECK(c.put("/todo/" + a.id + "/done").status == 200);
  CHECK(c.get("/todo/" + a.id + "/history").status == 200);
  CHECK(c.get("/nowhere").status == 404);
  CHECK(c.request("POST", "/todo", R"({"description":"abc"})", {{"Content-Type", "text/plain"}}).status
        == 415);
  CHECK(c.post_json("/todo", {{"description", "x"}}).status == 400);
  auto last = c.get("/todo/" + a.id + "/history");
  CHECK(last.status == 200);
  CHECK(last.json_body()["items"].size() == 2);
  CHECK(c.connections() == 1);
}

// -- concurrency ---------------------------------------------------------------

namespace {

/// Runs `fn(thread_index, client)` on `threads` threads at once, each with its own
/// connection; collects what each returns. Exceptions are rethrown here.
template <class F>
auto on_threads(int threads, F fn) {
  using result = decltype(fn(0, std::declval<http_client&>()));
  auto port = shared_server().port();
  std::vector<result> results(static_cast<size_t>(threads));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      try {
        http_client c{port};
        c.get("/healthz"); // connect before the start line
        ++ready;
        while (ready < threads)
          std::this_thread::yield();
        results[static_cast<size_t>(t)] = fn(t, c);
      } catch (...) {
        errors[static_cast<size_t>(t)] = std::current_exception();
        ++ready;
      }
    });
  for (auto& th : pool)
    th.join();
  for (auto& e : errors)
    if (e)
      std::rethrow_exception(e);
  return results;
}

} // namespace

TEST_CASE("concurrent writes to one todo each append exactly one event with consecutive versions",
          "[e2e][todo][concurrency]") {
  auto c = create("contended todo");
  auto before = head();
  auto answers = on_threads(8, [&](int t, http_client& hc) {
    std::vector<response> out;
    for (int i = 0; i < 10; ++i)
      out.push_back(i % 2 == 0 ? hc.put("/todo/" + c.id + "/done")
                               : hc.put_json("/todo/change-description",
                                             {{"id", c.id},
                                              {"description", "writer " + std::to_string(t)}}));
    return out;
  });
  std::set<uint64_t> versions, positions;
  for (auto& list : answers)
    for (auto& r : list) {
      INFO("answer " << r.status << ": " << r.body);
      REQUIRE(r.status == 200);
      auto a = ack_of(r);
      CHECK(versions.insert(a.version).second);
      CHECK(positions.insert(a.position).second);
    }
  REQUIRE(versions.size() == 80);
  CHECK(*versions.begin() == 2);
  CHECK(*versions.rbegin() == 81);
  CHECK(*positions.begin() == before + 1);
  CHECK(*positions.rbegin() == before + 80);
  CHECK(head() == before + 80);
  CHECK(history(c.id).size() == 81);
}

TEST_CASE("concurrent writes with the same If-Match: exactly one succeeds, the others are 412",
          "[e2e][todo][if-match][concurrency]") {
  auto c = create("raced todo");
  auto before = head();
  auto answers = on_threads(8, [&](int, http_client& hc) {
    return hc.put("/todo/" + c.id + "/done", {{"If-Match", "\"1\""}}).status;
  });
  CHECK(std::count(answers.begin(), answers.end(), 200u) == 1);
  CHECK(std::count(answers.begin(), answers.end(), 412u) == 7);
  CHECK(head() == before + 1);
  CHECK(history(c.id).size() == 2);
}

TEST_CASE("concurrent POSTs with the same Idempotency-Key and body create one todo",
          "[e2e][todo][idempotency][concurrency]") {
  auto key = "race-" + random_uuid();
  auto before = head();
  auto answers = on_threads(8, [&](int, http_client& hc) {
    return hc.post_json("/todo", {{"description", "created once"}}, {{"Idempotency-Key", key}});
  });
  std::set<std::string> ids;
  std::set<uint64_t> positions;
  for (auto& r : answers) {
    INFO("answer " << r.status << ": " << r.body);
    CHECK(r.status == 201);
    if (r.status == 201) {
      ids.insert(ack_of(r).id);
      positions.insert(ack_of(r).position);
    }
  }
  CHECK(ids.size() == 1);
  CHECK(positions.size() == 1);
  CHECK(head() == before + 1);
}

TEST_CASE("paging with next lists every earlier todo exactly once while todos are written "
          "between pages",
          "[e2e][todo][read][paging]") {
  std::set<std::string> existing;
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) {
    auto a = create("stable page " + std::to_string(i));
    existing.insert(a.id);
    last = a.position;
  }
  // Every todo present before paging starts (read model at `last`).
  std::set<std::string> all_before;
  for (auto& i : list_all("&minPosition=" + std::to_string(last), 1000))
    all_before.insert(i["id"].get<std::string>());
  for (auto& id : existing)
    REQUIRE(all_before.count(id) == 1);

  std::set<std::string> seen;
  std::string after;
  std::vector<std::string> mine(existing.begin(), existing.end());
  for (int page = 0;; ++page) {
    REQUIRE(page < 100000);
    auto target = "/todo?limit=25" + (after.empty() ? "" : "&after=" + after);
    auto r = client().get(target);
    REQUIRE(r.status == 200);
    auto j = r.json_body();
    for (auto& i : j["items"]) {
      INFO("item " << i.dump());
      CHECK(seen.insert(i["id"].get<std::string>()).second);
    }
    // Between pages: a new todo, a changed one, a finished one.
    auto fresh = create("written while paging " + std::to_string(page));
    mine.push_back(fresh.id);
    change_description(mine[static_cast<size_t>(page) % mine.size()], "changed while paging");
    done(mine[static_cast<size_t>(page * 7) % mine.size()]);
    if (j["next"].is_null())
      break;
    after = j["next"].get<std::string>();
  }
  for (auto& id : all_before) {
    INFO("todo " << id);
    CHECK(seen.count(id) == 1);
  }
}

TEST_CASE("a JSON string with a lone surrogate escape is a 400", "[e2e][todo][validation]") {
  auto before = head();
  check_rejected(client().request("POST", "/todo", R"({"description":"ab\ud800cd"})", json_type),
                 400, before);
}

TEST_CASE("the body limit is configurable and inclusive", "[e2e][todo][validation]") {
  server s{server_options::with_args({"--http.body-limit=200"})};
  http_client c{s.port()};
  auto ok = c.request("POST", "/todo", padded_create_body(200), json_type);
  CHECK(ok.status == 201);
  auto over = c.request("POST", "/todo", padded_create_body(201), json_type);
  check_problem(over, 413);
  CHECK(all_head(c) == 1);
}

TEST_CASE("a todo with hundreds of events keeps its full history and every snapshot",
          "[e2e][todo][history]") {
  auto c = create("long lived");
  for (int i = 2; i <= 250; ++i) {
    if (i % 3 == 0)
      put_in_progress(c.id);
    else if (i % 3 == 1)
      done(c.id);
    else
      change_description(c.id, "long lived " + std::to_string(i));
  }
  auto items = history(c.id);
  REQUIRE(items.size() == 250);
  for (size_t i = 0; i < items.size(); ++i)
    REQUIRE(items[i]["version"] == i + 1);
  // Spot checks across snapshot boundaries.
  for (size_t v : {1u, 99u, 100u, 101u, 200u, 201u, 250u}) {
    auto& it = items[v - 1];
    auto r = client().get("/todo/" + c.id + "/snapshot/" + it["id"].get<std::string>());
    REQUIRE(r.status == 200);
    CHECK(r.json_body() == it["snapshot"]);
  }
  CHECK(items[249]["snapshot"] == todo_state(c.id, "long lived 248", "Done", 250));
  auto u = undo_to(c.id, items[100]["id"].get<std::string>()); // version 101
  CHECK(u.version == 251);
  CHECK(history(c.id).back()["snapshot"]
        == todo_state(c.id, items[100]["snapshot"]["description"].get<std::string>(),
                      items[100]["snapshot"]["status"].get<std::string>(), 251));
}

TEST_CASE("a history longer than a page (1000 events) is sent in chunks, page by page, and is "
          "the same whole history: every event once, in order, each with its snapshot",
          "[e2e][todo][history]") {
  auto c = create("paged 1");
  auto grow_to = [&](int version) {
    for (int v = static_cast<int>(history(c.id).size()) + 1; v <= version; ++v)
      change_description(c.id, "paged " + std::to_string(v));
  };
  auto check_whole = [&](size_t n) {
    auto r = client().get("/todo/" + c.id + "/history");
    REQUIRE(r.status == 200);
    CHECK(r.header("Transfer-Encoding").value_or("") == "chunked");
    CHECK_FALSE(r.header("Content-Length"));
    auto items = r.json_body()["items"];
    REQUIRE(items.size() == n);
    for (size_t i = 0; i < n; ++i) {
      INFO("item " << i);
      REQUIRE(items[i]["version"] == i + 1);
      REQUIRE(items[i]["snapshot"]
              == todo_state(c.id, "paged " + std::to_string(i + 1), "Created", i + 1));
    }
    // Each item is the stream's event of its version.
    for (uint64_t from = 1; from <= n; from += 1000) {
      auto r = client().get("/streams/todo-" + c.id + "?limit=1000&from=" + std::to_string(from));
      REQUIRE(r.status == 200);
      auto page = r.json_body();
      REQUIRE(page["items"].size() == std::min<uint64_t>(1000, n - from + 1));
      for (auto& e : page["items"])
        CHECK(items[e["version"].get<size_t>() - 1]["id"] == e["id"]);
    }
  };
  grow_to(2000); // exactly two pages: the last part only closes the array
  check_whole(2000);
  grow_to(2301);
  check_whole(2301);
  // Its ETag is its last version, known before the first page is sent.
  CHECK(client().get("/todo/" + c.id + "/history").header("ETag") == "\"2301\"");
  auto unchanged = client().get("/todo/" + c.id + "/history", {{"If-None-Match", "\"2301\""}});
  CHECK(unchanged.status == 304);
  CHECK(unchanged.body.empty());
  CHECK_FALSE(unchanged.header("Transfer-Encoding"));
  // HEAD: the same header, no body.
  auto head = client().request("HEAD", "/todo/" + c.id + "/history");
  CHECK(head.status == 200);
  CHECK(head.header("Transfer-Encoding").value_or("") == "chunked");
  CHECK(head.body.empty());
  // HTTP/1.0 knows no chunked coding (RFC 9112 §6.1): the body is the JSON as
  // it is, ended by the close.
  auto old_http = raw_exchange(shared_server().port(),
                               "GET /todo/" + c.id + "/history HTTP/1.0\r\n\r\n", 10000ms);
  auto end_of_head = old_http.find("\r\n\r\n");
  REQUIRE(end_of_head != std::string::npos);
  auto old_head = old_http.substr(0, end_of_head);
  INFO(old_head);
  CHECK(old_http.rfind("HTTP/1.1 200 ", 0) == 0);
  CHECK(old_head.find("Transfer-Encoding") == std::string::npos);
  CHECK(old_head.find("Content-Length") == std::string::npos);
  CHECK(old_head.find("Connection: close") != std::string::npos);
  auto old_body = json::parse(old_http.substr(end_of_head + 4));
  CHECK(old_body["items"].size() == 2301);
  CHECK(old_body["items"].back()["version"] == 2301);
  // The connection serves the next request after a chunked answer.
  CHECK(client().get("/todo/" + c.id + "/history").json_body()["items"].size() == 2301);
  CHECK(client().get("/healthz").status == 200);
}
