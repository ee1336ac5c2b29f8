// API.md §2 and §6 through a real HTTP client against the real eventsd:
// GET /streams/{streamId}, GET /streams/$all (event JSON, from inclusive,
// `next` = the next `from` or null, from past the end, limit clamp, bad
// from/limit, unknown stream) and GET /streams (newest first, before/limit).
// One server (own database) is shared by every test case of this file; it
// starts with more than 1000 events so that clamping and default limits show.
#include "http_support.hpp"

#include <catch2/catch.hpp>

#include <cctype>
#include <map>
#include <set>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

namespace {

constexpr size_t bulk_threads = 4;
constexpr size_t bulk_per_thread = 280; // 1120 todos: more than the 1000 limit

/// The server of this file (harness's shared_server), seeded with the bulk todos.
server& seeded_server() {
  return shared_server({}, [](server& s) {
    create_todos(s.port(), bulk_threads, bulk_per_thread, "bulk");
  });
}

http_client& client() {
  static http_client c{seeded_server().port()};
  return c;
}

json get_json(const std::string& target) {
  auto r = client().get(target);
  INFO("GET " << target << " answered " << r.status << ": " << r.body.substr(0, 500));
  REQUIRE(r.status == 200);
  REQUIRE(media_type(r) == "application/json");
  auto j = r.json_body();
  REQUIRE(j.is_object());
  REQUIRE(j.contains("items"));
  REQUIRE(j["items"].is_array());
  REQUIRE(j.contains("next"));
  REQUIRE((j["next"].is_null() || j["next"].is_number_unsigned()));
  return j;
}

std::vector<uint64_t> field_of(const json& items, const char* key) {
  std::vector<uint64_t> out;
  for (auto& e : items)
    out.push_back(e.at(key).get<uint64_t>());
  return out;
}

/// A todo with four events: created, in progress, description changed, done.
struct four_event_todo {
  std::string id;
  std::string stream;
  std::vector<write_ack> acks;
};

four_event_todo make_four_event_todo(const std::string& description) {
  auto& c = client();
  four_event_todo t;
  auto created = c.post_json("/todo", {{"description", description}});
  REQUIRE(created.status == 201);
  t.acks.push_back(ack_of(created));
  t.id = t.acks[0].id;
  t.stream = "todo-" + t.id;
  auto p = c.put("/todo/" + t.id + "/put-in-progress");
  REQUIRE(p.status == 200);
  t.acks.push_back(ack_of(p));
  // Another stream's write in between: stream positions are not contiguous.
  REQUIRE(c.post_json("/todo", {{"description", "interleaved"}}).status == 201);
  auto ch = c.put_json("/todo/change-description", {{"id", t.id}, {"description", description + "!"}});
  REQUIRE(ch.status == 200);
  t.acks.push_back(ack_of(ch));
  auto d = c.put("/todo/" + t.id + "/done");
  REQUIRE(d.status == 200);
  t.acks.push_back(ack_of(d));
  return t;
}

} // namespace

TEST_CASE("GET /streams/{streamId}: the stream's events ascending by version, as event JSON",
          "[http][streams]") {
  auto t = make_four_event_todo("read me as a stream");
  auto page = get_json("/streams/" + t.stream);
  auto& items = page["items"];
  REQUIRE(items.size() == 4);
  CHECK(page["next"].is_null());
  for (auto& e : items) {
    check_event_shape(e);
    CHECK(e["stream"] == t.stream);
  }
  CHECK(field_of(items, "version") == std::vector<uint64_t>{1, 2, 3, 4});
  std::vector<uint64_t> positions;
  for (auto& a : t.acks)
    positions.push_back(a.position);
  CHECK(field_of(items, "position") == positions);
  CHECK(items[0]["type"] == "created");
  CHECK(items[1]["type"] == "status-changed-to-in-progress");
  CHECK(items[2]["type"] == "description-changed");
  CHECK(items[3]["type"] == "status-changed-to-done");
  CHECK(items[0]["data"].value("description", std::string{}) == "read me as a stream");
  CHECK(items[2]["data"].value("description", std::string{}) == "read me as a stream!");

  // The same events as the todo's history (ids, versions, positions, times).
  auto h = client().get("/todo/" + t.id + "/history");
  REQUIRE(h.status == 200);
  auto hist = h.json_body()["items"];
  REQUIRE(hist.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(items[i]["id"] == hist[i]["id"]);
    CHECK(items[i]["type"] == hist[i]["type"]);
    CHECK(items[i]["position"] == hist[i]["position"]);
    CHECK(items[i]["occurredAt"] == hist[i]["occurredAt"]);
  }
  // And the same events as $all at those positions.
  for (auto& e : items) {
    auto one = get_json("/streams/$all?from=" + std::to_string(e["position"].get<uint64_t>())
                        + "&limit=1");
    REQUIRE(one["items"].size() == 1);
    CHECK(one["items"][0] == e);
  }
}

TEST_CASE("GET /streams/{streamId}: the id part of `todo-<uuid>` is accepted in any letter case",
          "[http][streams]") {
  auto t = make_four_event_todo("read me in capitals");
  std::string upper = t.id;
  for (auto& ch : upper)
    ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  REQUIRE(upper != t.id);
  auto page = get_json("/streams/todo-" + upper);
  REQUIRE(page["items"].size() == 4);
  CHECK(page["items"][0]["stream"] == t.stream); // answered in lowercase
  CHECK(page == get_json("/streams/" + t.stream));
}

TEST_CASE("GET /streams/{streamId}: from is inclusive, next is the next from or null",
          "[http][streams]") {
  auto t = make_four_event_todo("page me");
  auto base = "/streams/" + t.stream;
  auto all = get_json(base)["items"];
  REQUIRE(all.size() == 4);

  auto p = get_json(base + "?from=2&limit=2");
  CHECK(field_of(p["items"], "version") == std::vector<uint64_t>{2, 3});
  CHECK(p["next"] == 4);
  CHECK(p["items"][0] == all[1]);

  p = get_json(base + "?from=3&limit=1");
  CHECK(field_of(p["items"], "version") == std::vector<uint64_t>{3});
  CHECK(p["next"] == 4);

  // Exactly the rest: no next page.
  p = get_json(base + "?from=3&limit=2");
  CHECK(field_of(p["items"], "version") == std::vector<uint64_t>{3, 4});
  CHECK(p["next"].is_null());
  p = get_json(base + "?from=4");
  CHECK(field_of(p["items"], "version") == std::vector<uint64_t>{4});
  CHECK(p["next"].is_null());

  // Following `next` with limit=1 visits every event once.
  json walked = json::array();
  json from = 1;
  int pages = 0;
  while (!from.is_null() && pages++ < 10) {
    auto pg = get_json(base + "?limit=1&from=" + std::to_string(from.get<uint64_t>()));
    REQUIRE(pg["items"].size() == 1);
    walked.push_back(pg["items"][0]);
    from = pg["next"];
  }
  CHECK(walked == all);

  // from past the end: 200 with no items.
  for (auto past : {"5", "6", "1000000", "9223372036854775807"}) {
    INFO("from=" << past);
    auto e = get_json(base + "?from=" + past);
    CHECK(e["items"].empty());
    CHECK(e["next"].is_null());
  }

  // limit above 1000 is clamped, not refused.
  p = get_json(base + "?limit=5000");
  CHECK(p["items"] == all);
  p = get_json(base + "?limit=99999999999999999999999");
  CHECK(p["items"] == all);
}

TEST_CASE("GET /streams/{streamId} and /streams/$all: a page's ETag is the version (position) "
          "it was read through, If-None-Match naming it a 304 until an append reaches the page, "
          "If-Match naming another a 412",
          "[http][streams][conditional]") {
  auto& c = client();
  auto t = make_four_event_todo("poll me");
  auto base = "/streams/" + t.stream;
  auto etag = [](const response& r) { return r.header("ETag").value_or("(none)"); };
  // The whole stream; a full page, read through its look-ahead event.
  CHECK(etag(c.get(base)) == "\"4\"");
  CHECK(etag(c.get(base + "?from=2&limit=1")) == "\"3\"");
  CHECK(etag(c.get(base + "?from=9")) == "\"8\""); // empty: from - 1
  // Polling the tail: 304 (no body, the same tag) until the todo is written.
  auto tail = base + "?from=5";
  auto empty = c.get(tail);
  REQUIRE(empty.status == 200);
  REQUIRE(etag(empty) == "\"4\"");
  auto same = c.get(tail, {{"If-None-Match", "\"4\""}});
  CHECK(same.status == 304);
  CHECK_FALSE(same.header("Content-Type"));
  CHECK(etag(same) == "\"4\"");
  CHECK(c.request("HEAD", tail, std::nullopt, {{"If-None-Match", "\"4\""}}).status == 304);
  CHECK(c.get(tail, {{"If-None-Match", "*"}}).status == 304);
  CHECK(c.get(tail, {{"If-Match", "\"3\""}}).status == 412);
  CHECK(c.get(tail, {{"If-Match", "\"4\""}}).status == 200);
  REQUIRE(c.put("/todo/" + t.id + "/put-in-progress").status == 200);
  auto changed = c.get(tail, {{"If-None-Match", "\"4\""}});
  CHECK(changed.status == 200);
  CHECK(etag(changed) == "\"5\"");
  CHECK(changed.json_body()["items"].size() == 1);
  // A full page never changes: its tag stays as more is appended.
  CHECK(c.get(base + "?from=1&limit=2", {{"If-None-Match", "\"3\""}}).status == 304);

  // $all: the same by position.
  auto last = ack_of(c.post_json("/todo", {{"description", "the newest"}})).position;
  auto at_end = "/streams/$all?from=" + std::to_string(last + 1);
  CHECK(etag(c.get(at_end)) == "\"" + std::to_string(last) + "\"");
  CHECK(etag(c.get("/streams/$all?from=" + std::to_string(last))) ==
        "\"" + std::to_string(last) + "\"");
  CHECK(c.get(at_end, {{"If-None-Match", "\"" + std::to_string(last) + "\""}}).status == 304);
  auto next = ack_of(c.post_json("/todo", {{"description", "newer"}})).position;
  auto moved = c.get(at_end, {{"If-None-Match", "\"" + std::to_string(last) + "\""}});
  CHECK(moved.status == 200);
  CHECK(etag(moved) == "\"" + std::to_string(next) + "\"");
}

TEST_CASE("GET /streams/{streamId}: a stream read again is answered from the stream cache, "
          "page for page as the log answers it, and shows every write acknowledged before it",
          "[http][streams][cache]") {
  auto& c = client();
  auto hits = [&] { return metric(c, "eventsd_stream_cache_hits_total"); };
  auto misses = [&] { return metric(c, "eventsd_stream_cache_misses_total"); };
  auto t = make_four_event_todo("cache me");
  auto base = "/streams/" + t.stream;
  const auto hits0 = hits(), misses0 = misses();
  auto whole = get_json(base); // read from RocksDB, and kept
  REQUIRE(whole["items"].size() == 4);
  CHECK(misses() == misses0 + 1);
  CHECK(hits() == hits0);
  // Every page, from the cache: the same events and `next` as slices of the
  // whole stream (what the log reader answers: the test above).
  int reads = 0;
  for (uint64_t from : {1, 2, 3, 4, 5, 1000}) {
    for (uint64_t limit : {1, 2, 3, 4, 100}) {
      INFO("from=" << from << " limit=" << limit);
      auto pg = get_json(base + "?from=" + std::to_string(from) + "&limit=" + std::to_string(limit));
      ++reads;
      json expected = json::array();
      for (uint64_t v = from; v <= 4 && v < from + limit; ++v)
        expected.push_back(whole["items"][v - 1]);
      CHECK(pg["items"] == expected);
      if (from + limit <= 4)
        CHECK(pg["next"] == from + limit);
      else
        CHECK(pg["next"].is_null());
    }
  }
  CHECK(hits() == hits0 + reads);
  CHECK(misses() == misses0 + 1);
  // An acknowledged write drops the cached stream: the next read has it.
  auto undone = c.put("/todo/" + t.id + "/undo-to/" + whole["items"][0]["id"].get<std::string>());
  REQUIRE(undone.status == 200);
  auto ack = ack_of(undone);
  auto after = get_json(base);
  REQUIRE(after["items"].size() == 5);
  CHECK(after["items"][4]["position"] == ack.position);
  CHECK(after["items"][4]["version"] == 5);
  CHECK(misses() == misses0 + 2);
  const auto hits1 = hits(); // (undo-to's fold may have read the cached stream)
  CHECK(get_json(base + "?from=5")["items"] == json::array({after["items"][4]}));
  CHECK(hits() == hits1 + 1);
}

TEST_CASE("GET /streams/{streamId}: a stream of more than 1000 events pages by 100 by default "
          "and clamps limit to 1000",
          "[http][streams]") {
  auto created = client().post_json("/todo", {{"description", "a long stream"}});
  REQUIRE(created.status == 201);
  auto id = ack_of(created).id;
  // 1100 more events on the one todo, from 4 clients at once.
  auto batch = parallel_writes(seeded_server().port(), 4, 275, [&](http_client& c, size_t t, size_t i) {
    return (t + i) % 2 ? c.put("/todo/" + id + "/done") : c.put("/todo/" + id + "/put-in-progress");
  });
  REQUIRE(batch.acks.size() == 1100);
  auto base = "/streams/todo-" + id;

  auto d = get_json(base);
  REQUIRE(d["items"].size() == 100);
  CHECK(d["items"][0]["version"] == 1);
  CHECK(d["next"] == 101);
  for (auto limit : {"1000", "1001", "5000"}) {
    INFO("limit=" << limit);
    auto p = get_json(base + "?limit=" + limit);
    REQUIRE(p["items"].size() == 1000);
    CHECK(p["items"][999]["version"] == 1000);
    CHECK(p["next"] == 1001);
  }
  auto rest = get_json(base + "?from=1001&limit=1000");
  CHECK(field_of(rest["items"], "version").size() == 101);
  CHECK(rest["items"].back()["version"] == 1101);
  CHECK(rest["next"].is_null());
  // Versions ascend with positions.
  auto all = get_json(base + "?limit=1000")["items"];
  bool ascending = true;
  for (size_t i = 1; i < all.size(); ++i)
    ascending = ascending && all[i]["version"] == all[i - 1]["version"].get<uint64_t>() + 1
                && all[i]["position"] > all[i - 1]["position"];
  CHECK(ascending);
}

TEST_CASE("GET /streams/$all: the global log ascending by position with no gaps",
          "[http][streams][all]") {
  auto& c = client();
  auto events = read_all(c);
  REQUIRE(events.size() > 1000);
  for (size_t i = 0; i < events.size(); ++i) {
    INFO("index " << i);
    CHECK(events[i]["position"] == i + 1);
  }
  // Spot-check shapes (every one is checked in the SSE tests).
  for (size_t i = 0; i < events.size(); i += 97)
    check_event_shape(events[i]);
  check_event_shape(events.back());
  // Versions per stream are 1, 2, 3... in position order.
  std::map<std::string, uint64_t> versions;
  bool ordered = true;
  for (auto& e : events)
    ordered = ordered && e["version"] == ++versions[e["stream"].get<std::string>()];
  CHECK(ordered);

  auto head = events.size();
  // Default limit: 100, next = 101.
  auto d = get_json("/streams/$all");
  REQUIRE(d["items"].size() == 100);
  CHECK(d["items"][0]["position"] == 1);
  CHECK(d["next"] == 101);
  // `$` percent-encoded (as some clients send it) names the same log.
  CHECK(get_json("/streams/%24all?from=7&limit=3") == get_json("/streams/$all?from=7&limit=3"));
  // from=0 reads from the start.
  auto z = get_json("/streams/$all?from=0&limit=2");
  CHECK(field_of(z["items"], "position") == std::vector<uint64_t>{1, 2});
  CHECK(z["next"] == 3);
  // from inclusive, next = the position after the last item.
  auto m = get_json("/streams/$all?from=500&limit=3");
  CHECK(field_of(m["items"], "position") == std::vector<uint64_t>{500, 501, 502});
  CHECK(m["next"] == 503);
  CHECK(m["items"][0] == events[499]);
  // The end: the last item, then nothing.
  auto last = get_json("/streams/$all?from=" + std::to_string(head - 1) + "&limit=2");
  CHECK(field_of(last["items"], "position") == std::vector<uint64_t>{head - 1, head});
  CHECK(last["next"].is_null());
  auto past = get_json("/streams/$all?from=" + std::to_string(head + 1));
  CHECK(past["items"].empty());
  CHECK(past["next"].is_null());
  past = get_json("/streams/$all?from=18446744073709551615");
  CHECK(past["items"].empty());
  CHECK(past["next"].is_null());
}

TEST_CASE("GET /streams/$all: limit above 1000 is clamped to 1000", "[http][streams][all]") {
  for (auto limit : {"1000", "1001", "5000", "99999999999999999999999"}) {
    INFO("limit=" << limit);
    auto p = get_json(std::string{"/streams/$all?from=1&limit="} + limit);
    REQUIRE(p["items"].size() == 1000);
    CHECK(p["items"][0]["position"] == 1);
    CHECK(p["items"][999]["position"] == 1000);
    CHECK(p["next"] == 1001);
  }
  auto p = get_json("/streams/$all?from=1001&limit=5000");
  CHECK(p["items"].size() >= 120);
  CHECK(p["items"][0]["position"] == 1001);
}

TEST_CASE("GET /streams/{streamId} and /streams/$all: a malformed from or limit is a 400",
          "[http][streams][errors]") {
  auto t = make_four_event_todo("bad paging");
  for (std::string base : {"/streams/" + t.stream, std::string{"/streams/$all"}}) {
    for (std::string q : {"from=abc", "from=-1", "from=1.5", "from=", "from=%201", "from=1x",
                          "from=0x10", "limit=abc", "limit=-1", "limit=0", "limit=", "limit=2.0",
                          "limit=1e3", "from=1&limit=-5"}) {
      auto target = base + "?" + q;
      INFO("GET " << target);
      auto r = client().get(target);
      check_problem(r, 400);
    }
  }
}

TEST_CASE("a rejected limit says what it must be: -1 and 0 name the same bound, 1",
          "[http][streams][errors]") {
  for (std::string q : {"limit=-1", "limit=0", "limit=abc"}) {
    INFO("GET /streams/$all?" << q);
    auto r = client().get("/streams/$all?" + q);
    check_problem(r, 400);
    auto p = r.json_body();
    CHECK(p["detail"] == "query parameter `limit` must be an integer of at least 1");
    CHECK(p["errors"][0]["field"] == "limit");
    CHECK(p["errors"][0]["messages"][0] == "must be an integer of at least 1");
  }
  auto r = client().get("/streams/$all?from=-1");
  check_problem(r, 400);
  CHECK(r.json_body()["detail"] == "query parameter `from` must be a non-negative integer");
}

TEST_CASE("GET /streams/{streamId}: an unknown stream is a 404", "[http][streams][errors]") {
  for (std::string target :
       {"/streams/todo-" + random_uuid(), "/streams/todo-" + random_uuid() + "?from=1&limit=10",
        std::string{"/streams/no-such-stream"}, std::string{"/streams/todo-not-a-uuid"},
        std::string{"/streams/%24nothing"}}) {
    INFO("GET " << target);
    check_problem(client().get(target), 404);
  }
  // The stream name is exact: a known todo's stream with an upper-case prefix is another name.
  auto t = make_four_event_todo("case of the prefix");
  check_problem(client().get("/streams/TODO-" + t.id), 404);
}

TEST_CASE("GET /streams: every stream once, most recently written first, paged with before",
          "[http][streams][list]") {
  auto& c = client();
  // What the list must be, from the log itself.
  auto events = read_all(c);
  struct summary {
    uint64_t version = 0, last = 0;
  };
  std::map<std::string, summary> expected;
  for (auto& e : events) {
    auto& s = expected[e["stream"].get<std::string>()];
    s.version = e["version"];
    s.last = e["position"];
  }
  REQUIRE(expected.size() > 1000);

  // Default page: 50 items; next = the last item's lastPosition.
  auto first = get_json("/streams");
  REQUIRE(first["items"].size() == 50);
  CHECK(first["next"] == first["items"][49]["lastPosition"]);
  CHECK(first["items"][0]["lastPosition"] == events.size());

  // Walk every page with a prime page size.
  std::vector<json> walked;
  std::string target = "/streams?limit=97";
  int pages = 0;
  for (;;) {
    REQUIRE(pages++ < 100);
    auto p = get_json(target);
    for (auto& s : p["items"])
      walked.push_back(s);
    if (p["next"].is_null())
      break;
    REQUIRE_FALSE(p["items"].empty());
    CHECK(p["next"] == p["items"].back()["lastPosition"]);
    target = "/streams?limit=97&before=" + std::to_string(p["next"].get<uint64_t>());
  }
  CHECK(walked.size() == expected.size());
  std::set<std::string> seen;
  bool shapes = true, descending = true, matches = true;
  uint64_t previous = UINT64_MAX;
  for (auto& s : walked) {
    shapes = shapes && s.is_object() && s.size() == 3 && s["stream"].is_string()
             && s["version"].is_number_unsigned() && s["lastPosition"].is_number_unsigned();
    if (!shapes)
      break;
    auto name = s["stream"].get<std::string>();
    CHECK(seen.insert(name).second);
    auto last = s["lastPosition"].get<uint64_t>();
    descending = descending && last < previous;
    previous = last;
    auto i = expected.find(name);
    matches = matches && i != expected.end() && i->second.version == s["version"]
              && i->second.last == last;
  }
  CHECK(shapes);
  CHECK(descending);
  CHECK(matches);

  // before is exclusive; exactly the remaining count answers next = null.
  REQUIRE(walked.size() > 10);
  auto pivot = walked[walked.size() - 4]["lastPosition"].get<uint64_t>();
  auto tail = get_json("/streams?limit=3&before=" + std::to_string(pivot));
  REQUIRE(tail["items"].size() == 3);
  CHECK(tail["items"][0] == walked[walked.size() - 3]);
  CHECK(tail["items"][2] == walked.back());
  CHECK(tail["next"].is_null());
  auto more = get_json("/streams?limit=2&before=" + std::to_string(pivot));
  CHECK(more["next"] == walked[walked.size() - 2]["lastPosition"]);
  auto none = get_json("/streams?before=1");
  CHECK(none["items"].empty());
  CHECK(none["next"].is_null());
  auto zero = get_json("/streams?before=0&limit=5");
  CHECK(zero["items"][0] == walked[0]);
  // limit above 1000 is clamped.
  auto big = get_json("/streams?limit=5000");
  CHECK(big["items"].size() == 1000);
  CHECK(big["next"] == big["items"][999]["lastPosition"]);

  // A write to an old stream moves it to the top.
  auto oldest = walked.back()["stream"].get<std::string>();
  auto id = oldest.substr(5);
  auto w = c.put("/todo/" + id + "/done");
  REQUIRE(w.status == 200);
  auto top = get_json("/streams?limit=1");
  REQUIRE(top["items"].size() == 1);
  CHECK(top["items"][0]["stream"] == oldest);
  CHECK(top["items"][0]["lastPosition"] == ack_of(w).position);
  CHECK(top["items"][0]["version"] == ack_of(w).version);
}

TEST_CASE("GET /streams: a malformed before or limit is a 400", "[http][streams][list][errors]") {
  for (std::string q : {"before=abc", "before=-1", "before=1.5", "before=", "limit=abc",
                        "limit=-1", "limit=0", "limit="}) {
    INFO("GET /streams?" << q);
    check_problem(client().get("/streams?" + q), 400);
  }
}
