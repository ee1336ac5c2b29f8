// End-to-end tests of the read-model synchronization modes (API.md §5): each
// test starts the real eventsd in one `--projection.mode` on its own database.
#include "e2e/harness.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <thread>

using namespace eventsd::e2e;
using namespace std::chrono_literals;

namespace {

/// Starts `s`: unit-of-work mode, PostgreSQL behind its proxy, the given
/// drain timeout, `failpoints` armed; then writes one todo, so that the
/// projection is connected. Returns the log's head after it.
uint64_t start_unit_of_work(std::optional<server_behind_proxy>& s, const char* failpoints,
                            const std::string& drain_timeout_ms) {
  with_failpoints(failpoints, [&] {
    s.emplace(std::vector<std::string>{"--projection.mode=unit-of-work",
                                       "--projection.uow-timeout-ms=20000",
                                       "--http.drain-timeout-ms=" + drain_timeout_ms});
  });
  http_client c{s->srv.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the hang"}}).status == 201);
  return all_head(c);
}

/// Waits (1.5 s at most) until the read model has applied a position past `position`.
bool read_model_past(http_client& c, uint64_t position) {
  return eventually(
    [&] {
      auto at = c.get("/todo").header("X-Read-Model-Position");
      return at && std::stoull(*at) > position;
    },
    1500ms, 20ms);
}

struct expected_write {
  write_ack ack;
  json state; // {id, description, status, version} right after the write
};

json todo_state(const std::string& id, const std::string& description, const std::string& status,
                uint64_t version) {
  return {{"id", id}, {"description", description}, {"status", status}, {"version", version}};
}

/// Performs write number `i` of a fixed script over a few todos; `ids` grows
/// with each create. Every fourth write creates a todo, the next three change it.
expected_write scripted_write(http_client& c, int i, std::vector<json>& todos,
                              unsigned expected_status) {
  response r;
  int step = i % 4;
  if (step == 0) {
    auto d = "mode todo " + std::to_string(i / 4);
    r = c.post_json("/todo", {{"description", d}});
  } else {
    auto& t = todos.back();
    auto id = t["id"].get<std::string>();
    if (step == 1)
      r = c.put_json("/todo/change-description",
                     {{"id", id}, {"description", t["description"].get<std::string>() + "!"}});
    else if (step == 2)
      r = c.put("/todo/" + id + "/put-in-progress");
    else
      r = c.put("/todo/" + id + "/done");
  }
  INFO("write " << i << " answered " << r.status << ": " << r.body);
  REQUIRE(r.status == (step == 0 && expected_status == 200 ? 201u : expected_status));
  auto ack = ack_of(r);
  CHECK(r.header("ETag") == etag_of(ack.version));
  if (step == 0) {
    todos.push_back(todo_state(ack.id, "mode todo " + std::to_string(i / 4), "Created", 1));
  } else {
    auto& t = todos.back();
    if (step == 1)
      t["description"] = t["description"].get<std::string>() + "!";
    else
      t["status"] = step == 2 ? "InProgress" : "Done";
    t["version"] = ack.version;
  }
  return {ack, todos.back()};
}

/// GET /todo/{id} without minPosition, right now.
response read_now(http_client& c, const std::string& id) {
  return c.get("/todo/" + id);
}

void check_sees(const response& r, const expected_write& w) {
  INFO("GET /todo/" << w.ack.id << " answered " << r.status << ": " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.json_body() == w.state);
  auto p = r.header("X-Read-Model-Position");
  REQUIRE(p);
  CHECK(std::stoull(*p) >= w.ack.position);
}

} // namespace

TEST_CASE("unit-of-work: a read right after a write's answer sees the write",
          "[e2e][modes][unit-of-work]") {
  server s{server_options::with_args({"--projection.mode=unit-of-work"})};
  http_client c{s.port()};
  std::vector<json> todos;
  for (int i = 0; i < 20; ++i) {
    auto w = scripted_write(c, i, todos, 200);
    check_sees(read_now(c, w.ack.id), w);
  }
  // The list, too.
  auto r = c.get("/todo?limit=1000");
  REQUIRE(r.status == 200);
  auto items = r.json_body()["items"];
  CHECK(items.size() == todos.size());
  for (auto& t : todos) {
    bool found = false;
    for (auto& i : items)
      found = found || i == t;
    CHECK(found);
  }
}

TEST_CASE("eventual: the read model converges to the state folded from the log",
          "[e2e][modes][eventual]") {
  server s{server_options::with_args({"--projection.mode=eventual"})};
  http_client c{s.port()};
  std::vector<json> todos;
  for (int i = 0; i < 20; ++i)
    scripted_write(c, i, todos, 200);
  for (auto& t : todos) {
    auto id = t["id"].get<std::string>();
    json seen;
    bool converged = eventually([&] {
      auto r = read_now(c, id);
      if (r.status != 200)
        return false;
      seen = r.json_body();
      return seen == t;
    });
    INFO("todo " << t.dump() << " last seen " << seen.dump());
    CHECK(converged);
    // Folding the log gives the same state.
    auto h = c.get("/todo/" + id + "/history");
    REQUIRE(h.status == 200);
    CHECK(h.json_body()["items"].back()["snapshot"] == t);
  }
}

TEST_CASE("on-demand: a read right after a write brings the read model up to the write",
          "[e2e][modes][on-demand]") {
  server s{server_options::with_args({"--projection.mode=on-demand"})};
  http_client c{s.port()};
  std::vector<json> todos;
  for (int i = 0; i < 12; ++i) {
    auto w = scripted_write(c, i, todos, 200);
    check_sees(read_now(c, w.ack.id), w);
  }
  auto r = c.get("/todo?limit=1000");
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["items"].size() == todos.size());
  // A position the log has not reached cannot be caught up to.
  auto future = c.get("/todo?minPosition=1000000&waitMs=200");
  CHECK(future.status == 503);
  CHECK(future.header("Retry-After"));
}

TEST_CASE("on-demand: a minPosition the log holds is reached with any waitMs, even 0; one past "
          "the head waits waitMs only",
          "[e2e][modes][on-demand]") {
  server s{server_options::with_args({"--projection.mode=on-demand"})};
  http_client c{s.port()};
  std::vector<json> todos;
  // Each read follows its write at once: the read model is one event behind
  // when the read comes, and the read's own catch-up must not be cut short
  // by the `waitMs` meant for positions the log has not reached.
  for (int i = 0; i < 30; ++i) {
    auto w = scripted_write(c, i, todos, 200);
    auto pos = std::to_string(w.ack.position);
    check_sees(c.get("/todo/" + w.ack.id + "?minPosition=" + pos + "&waitMs=0"), w);
    auto w2 = scripted_write(c, i + 100, todos, 200);
    auto list = c.get("/todo?limit=1000&minPosition=" + std::to_string(w2.ack.position)
                      + "&waitMs=0");
    INFO(list.status << " " << list.body.substr(0, 300));
    REQUIRE(list.status == 200);
    CHECK(std::stoull(list.header("X-Read-Model-Position").value_or("0")) >= w2.ack.position);
  }
  auto began = std::chrono::steady_clock::now();
  auto past = c.get("/todo?minPosition=1000000&waitMs=0");
  CHECK(past.status == 503);
  CHECK(std::chrono::steady_clock::now() - began < 2s);
}

TEST_CASE("on-demand: a read waiting for a position the log reaches only later is answered "
          "once a write reaches it",
          "[e2e][modes][on-demand]") {
  server s{server_options::with_args({"--projection.mode=on-demand"})};
  http_client c{s.port()};
  std::vector<json> todos;
  auto first = scripted_write(c, 0, todos, 200);
  auto next = std::to_string(first.ack.position + 1);
  response waited;
  auto began = std::chrono::steady_clock::now();
  std::thread reader{[&] {
    http_client rc{s.port()};
    waited = rc.get("/todo?minPosition=" + next + "&waitMs=10000");
  }};
  std::this_thread::sleep_for(300ms);
  auto w = scripted_write(c, 1, todos, 200);
  reader.join();
  INFO(waited.status << " " << waited.body);
  REQUIRE(waited.status == 200);
  CHECK(std::stoull(waited.header("X-Read-Model-Position").value_or("0")) >= w.ack.position);
  CHECK(std::chrono::steady_clock::now() - began < 5s); // not at the end of waitMs
}

TEST_CASE("scheduled: the read model applies new events only every interval-ms",
          "[e2e][modes][scheduled]") {
  server s{server_options::with_args({"--projection.mode=scheduled", "--projection.interval-ms=3000"})};
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "first scheduled"}}));
  // Wait for a's tick: the next one is then about 3 s away.
  bool applied = eventually([&] { return read_now(c, a.id).status == 200; }, 5000ms, 10ms);
  REQUIRE(applied);
  auto written = std::chrono::steady_clock::now();
  auto b = c.post_json("/todo", {{"description", "second scheduled"}});
  REQUIRE(b.status == 201);
  auto bid = ack_of(b).id;
  auto d = c.put("/todo/" + a.id + "/done");
  REQUIRE(d.status == 200);

  auto early_b = read_now(c, bid);
  INFO("right after the write: " << early_b.status << " " << early_b.body);
  CHECK(early_b.status == 404);
  auto early_a = read_now(c, a.id);
  REQUIRE(early_a.status == 200);
  CHECK(early_a.json_body()["version"] == 1);
  CHECK(std::chrono::steady_clock::now() - written < 2500ms); // still before the next tick

  // minPosition waits for the next tick instead of answering 404.
  auto waited = c.get("/todo/" + bid + "?minPosition=" + std::to_string(ack_of(b).position)
                      + "&waitMs=5000");
  INFO("with minPosition: " << waited.status << " " << waited.body);
  CHECK(waited.status == 200);

  sleep_for(2000ms);
  bool converged = eventually(
    [&] {
      auto r = read_now(c, bid);
      auto ra = read_now(c, a.id);
      return r.status == 200 && ra.status == 200 && ra.json_body()["version"] == 2;
    },
    1500ms);
  CHECK(converged);
}

TEST_CASE("a minPosition read the read model cannot reach waits 5 s without waitMs, and 30 s "
          "with a waitMs above 30000 (clamped), then answers 503 with Retry-After",
          "[e2e][modes][scheduled][read][slow]") {
  // Scheduled every 10 minutes: the read model applies nothing during the test.
  server s{server_options::with_args({"--projection.mode=scheduled",
                                      "--projection.interval-ms=600000"})};
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "never applied in time"}}));
  auto target = "/todo/" + a.id + "?minPosition=" + std::to_string(a.position);
  struct timed_read {
    response r;
    std::chrono::milliseconds took{0};
  };
  auto read = [&](const std::string& path) {
    http_client rc{s.port()};
    auto began = std::chrono::steady_clock::now();
    timed_read t{rc.get(path)};
    t.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                                    - began);
    return t;
  };
  timed_read by_default, clamped, list_clamped;
  std::thread t1{[&] { by_default = read(target); }};
  std::thread t2{[&] { clamped = read(target + "&waitMs=999999999"); }};
  std::thread t3{[&] {
    list_clamped = read("/todo?minPosition=" + std::to_string(a.position) + "&waitMs=30001");
  }};
  t1.join();
  t2.join();
  t3.join();
  for (auto* t : {&by_default, &clamped, &list_clamped}) {
    INFO(t->r.status << " after " << t->took.count() << " ms: " << t->r.body);
    CHECK(t->r.status == 503);
    CHECK(t->r.header("Retry-After").has_value());
    CHECK(t->r.header("X-Read-Model-Position") == std::optional<std::string>{"0"});
  }
  CHECK(by_default.took >= 4900ms);
  CHECK(by_default.took < 15s);
  CHECK(clamped.took >= 29900ms);
  CHECK(clamped.took < 45s); // 30 s, not the 999999999 ms asked for
  CHECK(list_clamped.took >= 29900ms);
  CHECK(list_clamped.took < 45s);
}

TEST_CASE("unit-of-work with PostgreSQL unreachable: writes answer 202 with the same body, "
          "/readyz and read-model reads answer 503",
          "[e2e][modes][unit-of-work][postgres-down]") {
  server s{server_options::without_postgres(
    {"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=300"})};
  http_client c{s.port()};

  auto created = c.post_json("/todo", {{"description", "written while PostgreSQL is down"}});
  INFO("POST answered " << created.status << ": " << created.body);
  REQUIRE(created.status == 202);
  auto a = ack_of(created);
  CHECK(is_canonical_uuid(a.id));
  CHECK(a.version == 1);
  CHECK(a.position == 1);
  CHECK(created.header("ETag") == "\"1\"");
  CHECK(created.json_body().size() == 3);
  // A replay answers as the first time did, 202 included: the read model still lags.
  auto key = random_uuid();
  auto keyed = c.post_json("/todo", {{"description", "keyed while down"}},
                           {{"Idempotency-Key", key}});
  REQUIRE(keyed.status == 202);
  auto replay = c.post_json("/todo", {{"description", "keyed while down"}},
                            {{"Idempotency-Key", key}});
  CHECK(replay.status == 202);
  CHECK(replay.body == keyed.body);
  CHECK(all_head(c) == 2);

  auto p = c.put("/todo/" + a.id + "/put-in-progress");
  REQUIRE(p.status == 202);
  CHECK(ack_of(p).version == 2);
  CHECK(ack_of(p).position == 3);
  CHECK(p.header("ETag") == "\"2\"");
  auto ch = c.put_json("/todo/change-description", {{"id", a.id}, {"description", "still down"}});
  REQUIRE(ch.status == 202);
  CHECK(ack_of(ch).version == 3);
  auto d = c.put("/todo/" + a.id + "/done");
  REQUIRE(d.status == 202);
  CHECK(ack_of(d).version == 4);

  // The events are durable in the log.
  auto h = c.get("/todo/" + a.id + "/history");
  REQUIRE(h.status == 200);
  auto items = h.json_body()["items"];
  REQUIRE(items.size() == 4);
  CHECK(items.back()["snapshot"] == todo_state(a.id, "still down", "Done", 4));
  CHECK(all_head(c) == 5);

  auto ready = c.get("/readyz");
  INFO("/readyz answered " << ready.status << ": " << ready.body);
  CHECK(ready.status == 503);
  CHECK(ready.header("Content-Type").value_or("").rfind("application/problem+json", 0) == 0);
  auto rj = json::parse(ready.body, nullptr, false);
  REQUIRE(rj.is_object());
  CHECK(rj.value("status", 0) == 503);
  CHECK(rj.contains("type"));
  CHECK(rj.contains("title"));
  CHECK(rj.contains("detail"));

  auto one = c.get("/todo/" + a.id);
  INFO("GET /todo/{id} answered " << one.status << ": " << one.body);
  CHECK(one.status == 503);
  CHECK(one.header("Content-Type").value_or("").rfind("application/problem+json", 0) == 0);
  auto list = c.get("/todo");
  CHECK(list.status == 503);
  // The reason in eventsd's words, not a rendered CAF error, nor PostgreSQL's
  // (which names its host and port): those are in the log.
  INFO("GET /todo: " << list.body);
  CHECK(list.json_body().value("detail", "").find("PostgreSQL cannot be reached")
        != std::string::npos);
  CHECK(list.body.find("error(") == std::string::npos);
  for (auto* body : {&ready.body, &one.body, &list.body}) {
    CHECK(body->find("Connection refused") == std::string::npos);
    CHECK(body->find("127.0.0.1") == std::string::npos);
  }
  auto out = s.output();
  auto logged = out.find("eventsd: read-model read failed: ");
  REQUIRE(logged != std::string::npos);
  CHECK(out.substr(logged, out.find('\n', logged) - logged).find("Connection refused")
        != std::string::npos);
  CHECK(c.get("/healthz").status == 200);
}

namespace {

/// GET `target`, and how long its answer took.
std::pair<response, std::chrono::milliseconds> timed_get(http_client& c,
                                                         const std::string& target) {
  auto began = std::chrono::steady_clock::now();
  auto r = c.get(target);
  return {r, std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now() - began)};
}

} // namespace

TEST_CASE("on-demand: once PostgreSQL is back after a probe found it gone, a read reconnects "
          "the projection at once, with no write to prompt it",
          "[e2e][modes][on-demand][postgres-down]") {
  server_behind_proxy s{{"--projection.mode=on-demand"}};
  http_client c{s.srv.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "read across an outage"}}));
  REQUIRE(c.get("/todo/" + a.id).status == 200);
  // A readiness probe finds PostgreSQL gone and fails to reconnect: the
  // projection no longer knows its position and must read it again.
  s.proxy.cut();
  REQUIRE(c.get("/readyz").status == 503);
  s.proxy.restore();
  // No write comes: the read itself has the projection connect again.
  auto [r, took] = timed_get(c, "/todo/" + a.id);
  INFO("answer after " << took.count() << " ms: " << r.status << " " << r.body);
  CHECK(r.status == 200);
  CHECK(r.header("X-Read-Model-Position") == std::to_string(a.position));
  CHECK(took < 3s); // not a 503 at the end of the 5 s catch-up wait
}

TEST_CASE("on-demand: reads during a long PostgreSQL outage answer 503 within a second, not at "
          "the end of the projection's retry backoff, and the first read after it is served",
          "[e2e][modes][on-demand][postgres-down]") {
  server_behind_proxy s{{"--projection.mode=on-demand"}};
  http_client c{s.srv.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "read during an outage"}}));
  REQUIRE(c.get("/todo/" + a.id).status == 200);
  s.proxy.cut();
  REQUIRE(c.post_json("/todo", {{"description", "written during the outage"}}).status == 201);
  // Each read has the projection try to reach PostgreSQL; each failure
  // doubles its retry backoff (0.1 s, 0.2 s, … up to 5 s), which the reads
  // must not wait out.
  for (int i = 0; i < 9; ++i) {
    auto [r, took] = timed_get(c, "/todo/" + a.id);
    INFO("read " << i << " after " << took.count() << " ms: " << r.status << " " << r.body);
    CHECK(r.status == 503);
    CHECK(took < 1500ms);
  }
  s.proxy.restore();
  auto [back, took] = timed_get(c, "/todo/" + a.id);
  INFO("after the outage, in " << took.count() << " ms: " << back.status << " " << back.body);
  CHECK(back.status == 200);
  CHECK(back.header("X-Read-Model-Position") == "2");
  CHECK(took < 3s);
}

TEST_CASE("on-demand and minPosition reads with PostgreSQL never reached answer 503 saying so, "
          "without claiming a read-model position",
          "[e2e][modes][on-demand][postgres-down]") {
  server s{server_options::without_postgres({"--projection.mode=on-demand"})};
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "never projected"}}));
  for (auto target : {"/todo/" + a.id, "/todo/" + a.id + "?minPosition=1&waitMs=1500",
                      std::string{"/todo?waitMs=1500"}}) {
    auto r = c.get(target);
    INFO("GET " << target << " answered " << r.status << ": " << r.body);
    CHECK(r.status == 503);
    CHECK(r.header("Retry-After"));
    CHECK_FALSE(r.header("X-Read-Model-Position"));
    CHECK(r.json_body().value("detail", "").find("PostgreSQL not reached") != std::string::npos);
  }
}


TEST_CASE("unit-of-work: a write still waiting for the read model when SIGTERM comes is answered "
          "202 (its event is durable), not 503",
          "[e2e][modes][unit-of-work][postgres-down][shutdown]") {
  server s{server_options::without_postgres(
    {"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=20000"})};
  response answered;
  std::thread writer{[&] {
    http_client c{s.port()};
    answered = c.post_json("/todo", {{"description", "durable before the stop"}});
  }};
  std::this_thread::sleep_for(500ms); // appended, now waiting for the read model
  auto t0 = std::chrono::steady_clock::now();
  auto status = s.stop();
  auto took = std::chrono::steady_clock::now() - t0;
  writer.join();
  CHECK(WIFEXITED(status));
  INFO("answer: " << answered.status << " " << answered.body);
  REQUIRE(answered.status == 202);
  auto a = ack_of(answered);
  CHECK(a.version == 1);
  CHECK(took < 4s); // not the 20 s of the wait, nor the 5 s drain deadline
  s.start();
  http_client c{s.port()};
  CHECK(c.get("/todo/" + a.id + "/history").json_body()["items"].size() == 1);
}

TEST_CASE("unit-of-work: with PostgreSQL hung (the projection stuck in a statement), a write "
          "waiting when SIGTERM comes is still answered 202 at once",
          "[e2e][modes][unit-of-work][postgres-down][shutdown]") {
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=20000",
                         "--postgres.query-timeout-ms=4000"}};
  http_client c{s.srv.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the hang"}}).status == 201);
  s.proxy.stall();
  response answered;
  std::atomic<bool> got{false};
  std::thread writer{[&] {
    http_client wc{s.srv.port()};
    answered = wc.post_json("/todo", {{"description", "durable while PostgreSQL hangs"}});
    got = true;
  }};
  std::this_thread::sleep_for(700ms); // appended; the projection now hangs in its apply
  auto t0 = std::chrono::steady_clock::now();
  std::thread stopper{[&] { s.srv.stop(); }}; // the exit waits for the stuck statement
  while (!got && std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(20ms);
  auto took = std::chrono::steady_clock::now() - t0;
  writer.join();
  stopper.join();
  s.proxy.restore();
  INFO("answer: " << answered.status << " " << answered.body);
  CHECK(answered.status == 202);
  CHECK(took < 3s); // not at the 5 s drain deadline
}

TEST_CASE("eventual: with PostgreSQL hung while the projection applies a batch, the admin view, "
          "/readyz, minPosition waits and a rebuild request answer on time, and SIGTERM ends "
          "the server at once",
          "[e2e][modes][eventual][postgres-down][shutdown]") {
  // The statement timeout is longer than every wait below: only the
  // projection's worker waits for PostgreSQL, not what asks about it.
  server_behind_proxy s{{"--postgres.query-timeout-ms=30000"}};
  http_client c{s.srv.port()};
  auto first = ack_of(c.post_json("/todo", {{"description", "before the hang"}}));
  REQUIRE(c.get("/todo/" + first.id + "?minPosition=" + std::to_string(first.position)).status
          == 200);
  s.proxy.stall();
  auto second = ack_of(c.post_json("/todo", {{"description", "while PostgreSQL hangs"}}));
  std::this_thread::sleep_for(300ms); // the projection is now inside its apply
  auto timed = [](auto&& call) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = call();
    return std::pair{r, std::chrono::steady_clock::now() - t0};
  };

  auto [admin, admin_took] = timed([&] { return c.get("/admin/projections"); });
  INFO("admin view: " << admin.status << " " << admin.body);
  REQUIRE(admin.status == 200);
  auto item = admin.json_body()["items"][0];
  CHECK(item["connected"] == false);
  CHECK(item["state"] == "error");
  CHECK(item["lastError"].get<std::string>().find("has not answered") != std::string::npos);
  CHECK(item["position"] == first.position);
  CHECK(admin_took >= 2500ms); // the projection gave its worker 3 s to come back
  CHECK(admin_took < 10000ms); // not the statement's own 30 s

  // The worker is known to be stuck now: asking again does not wait again.
  auto [ready, ready_took] = timed([&] { return c.get("/readyz"); });
  INFO("readyz: " << ready.status << " " << ready.body);
  CHECK(ready.status == 503);
  CHECK(ready.body.find("has not answered") != std::string::npos);
  // It took the connection, but does not answer: not "unreachable".
  CHECK(ready.json_body()["checks"]["postgres"] == "not answering");
  CHECK(ready_took < 2500ms); // not another 3 s

  auto [waited, waited_took] = timed([&] {
    return c.get("/todo/" + second.id + "?minPosition=" + std::to_string(second.position)
                 + "&waitMs=300");
  });
  INFO("minPosition read: " << waited.status << " " << waited.body);
  CHECK(waited.status == 503);
  CHECK(waited.header("X-Read-Model-Position") == std::optional{std::to_string(first.position)});
  CHECK(waited_took < 2500ms); // not 3 s or the statement's 30 s

  auto rebuild_now = [&] { return c.request("POST", "/admin/projections/todos/rebuild"); };
  auto [rebuild, rebuild_took] = timed(rebuild_now);
  CHECK(rebuild.status == 202);
  CHECK(rebuild_took < 2500ms);
  CHECK(rebuild_now().status == 409);

  auto [status, stop_took] = timed([&] { return s.srv.stop(); });
  s.proxy.restore();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(stop_took < 2500ms); // not the 30 s of the statement
}

TEST_CASE("unit-of-work: while PostgreSQL is down writes answer 202; when it returns the read "
          "model catches up and writes answer 200 again",
          "[e2e][modes][unit-of-work][postgres-down]") {
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=300"}};
  http_client c{s.srv.port()};
  auto first = c.post_json("/todo", {{"description", "before the outage"}});
  REQUIRE(first.status == 201);
  auto a = ack_of(first);
  REQUIRE(c.get("/readyz").status == 200);

  s.proxy.cut();
  std::vector<write_ack> during;
  for (int i = 0; i < 3; ++i) {
    auto r = i == 0 ? c.put("/todo/" + a.id + "/put-in-progress")
                    : c.post_json("/todo", {{"description", "during the outage " + std::to_string(i)}});
    INFO("write during the outage answered " << r.status << ": " << r.body);
    REQUIRE(r.status == 202);
    during.push_back(ack_of(r));
  }
  CHECK(during[0].version == 2);
  CHECK(during[2].position == a.position + 3);
  CHECK(eventually([&] { return c.get("/readyz").status == 503; }, 10000ms, 100ms));

  s.proxy.restore();
  CHECK(eventually([&] { return c.get("/readyz").status == 200; }, 20000ms, 100ms));
  auto r = c.get("/todo/" + a.id + "?minPosition=" + std::to_string(during.back().position)
                 + "&waitMs=20000");
  INFO("after the outage: " << r.status << " " << r.body);
  REQUIRE(r.status == 200);
  CHECK(r.json_body() == todo_state(a.id, "before the outage", "InProgress", 2));
  for (size_t i = 1; i < during.size(); ++i)
    CHECK(c.get("/todo/" + during[i].id).status == 200);
  auto after = c.put("/todo/" + a.id + "/done");
  CHECK(after.status == 200);
}

TEST_CASE("unit-of-work: an Idempotency-Key replay answers the status of the first answer, "
          "whatever the read model does in between, also after a restart",
          "[e2e][modes][unit-of-work][postgres-down][idempotency]") {
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=300"}};
  http_client c{s.srv.port()};
  json body{{"description", "keyed"}};
  auto key_201 = random_uuid();
  auto answered_201 = c.post_json("/todo", body, {{"Idempotency-Key", key_201}});
  REQUIRE(answered_201.status == 201);

  s.proxy.cut();
  auto key_202 = random_uuid();
  auto answered_202 = c.post_json("/todo", body, {{"Idempotency-Key", key_202}});
  REQUIRE(answered_202.status == 202);
  // Past the window in which the first request could still be waiting.
  std::this_thread::sleep_for(1500ms);
  auto replay_201 = c.post_json("/todo", body, {{"Idempotency-Key", key_201}});
  CHECK(replay_201.status == 201); // the read model is unreachable, as it was not the first time
  CHECK(replay_201.body == answered_201.body);
  CHECK(replay_201.header("Location") == answered_201.header("Location"));

  s.proxy.restore();
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 20000ms, 100ms));
  auto id_202 = ack_of(answered_202).id;
  REQUIRE(c.get("/todo/" + id_202 + "?minPosition=" + std::to_string(ack_of(answered_202).position))
            .status == 200);
  auto replay_202 = c.post_json("/todo", body, {{"Idempotency-Key", key_202}});
  CHECK(replay_202.status == 202); // the read model holds it now, as it did not the first time
  CHECK(replay_202.body == answered_202.body);
  CHECK(replay_202.header("Location") == answered_202.header("Location"));

  s.srv.restart();
  http_client c2{s.srv.port()};
  CHECK(c2.post_json("/todo", body, {{"Idempotency-Key", key_202}}).status == 202);
  CHECK(c2.post_json("/todo", body, {{"Idempotency-Key", key_201}}).status == 201);
  CHECK(all_head(c2) == 2);
}

TEST_CASE("unit-of-work: replays that come while the first request still waits answer when it "
          "does and as it does, though the read model catches up before their own wait would end",
          "[e2e][modes][unit-of-work][postgres-down][idempotency]") {
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=4000"}};
  http_client c{s.srv.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the hang"}}).status == 201);
  auto head_before = all_head(c);
  json body{{"description", "keyed while PostgreSQL hangs"}};
  auto key = random_uuid();
  s.proxy.stall();
  using clock = std::chrono::steady_clock;
  response first;
  clock::time_point first_answered;
  auto first_sent = clock::now();
  std::thread first_thread{[&] {
    http_client fc{s.srv.port()};
    first = fc.post_json("/todo", body, {{"Idempotency-Key", key}});
    first_answered = clock::now();
  }};
  // The first request's event is durable; it now waits for the read model.
  REQUIRE(eventually([&] { return all_head(c) > head_before; }, 5000ms, 10ms));
  std::this_thread::sleep_for(1500ms);
  std::vector<response> replays(3);
  std::vector<clock::time_point> replay_answered(3);
  std::vector<std::thread> replay_threads;
  for (size_t i = 0; i < replays.size(); ++i)
    replay_threads.emplace_back([&, i] {
      http_client rc{s.srv.port()};
      replays[i] = rc.post_json("/todo", body, {{"Idempotency-Key", key}});
      replay_answered[i] = clock::now();
    });
  // The first request's wait ends (202) at 4 s; then PostgreSQL answers
  // again, while the replays' own waits (from 1.5 s on) would still run for
  // 1.5 s, and would end in a 201 as the read model catches up.
  first_thread.join();
  s.proxy.restore();
  for (auto& t : replay_threads)
    t.join();
  INFO("first: " << first.status << " " << first.body);
  REQUIRE(first.status == 202);
  CHECK(first_answered - first_sent >= 4000ms);
  for (size_t i = 0; i < replays.size(); ++i) {
    INFO("replay " << i << ": " << replays[i].status << " " << replays[i].body);
    CHECK(replays[i].status == 202);
    CHECK(replays[i].body == first.body);
    CHECK(replay_answered[i] - first_answered < 1200ms); // with the first, not at their own end
  }
  // Later replays read the status from the log.
  CHECK(c.post_json("/todo", body, {{"Idempotency-Key", key}}).status == 202);
}

TEST_CASE("unit-of-work: a keyed write and its replay still unanswered when SIGTERM comes answer "
          "the status the log recorded for the key first, as replays after the restart do",
          "[e2e][modes][unit-of-work][postgres-down][idempotency][shutdown]") {
  // The log writer takes 2 s to record each answer's status: the first
  // request's 201 is still on its way into the log when the drain begins.
  // A replay waits 3 s before it asks the read model: it is still waiting
  // then (without, its wait would end with the first's, a moment before).
  // The drain's fallback (half its time) comes well after the log writer's answer.
  std::optional<server_behind_proxy> s;
  auto head_before =
    start_unit_of_work(s, "log-writer.slow-answer-record,uow.replay-waits-late", "10000");
  http_client c{s->srv.port()};
  json body{{"description", "keyed, answered as the server stops"}};
  auto key = random_uuid();
  s->proxy.stall();
  response first, replay;
  std::thread first_thread{[&] {
    http_client fc{s->srv.port()};
    first = fc.post_json("/todo", body, {{"Idempotency-Key", key}});
  }};
  // Durable, waiting for the read model.
  REQUIRE(eventually([&] { return all_head(c) > head_before; }, 5000ms, 10ms));
  std::thread replay_thread{[&] {
    http_client rc{s->srv.port()};
    replay = rc.post_json("/todo", body, {{"Idempotency-Key", key}});
  }};
  std::this_thread::sleep_for(300ms); // the replay waits with the first request
  // The read model catches up: the first request decides 201 and the log
  // writer starts recording it (2 s); the drain begins during that.
  s->proxy.restore();
  REQUIRE(read_model_past(c, head_before));
  std::this_thread::sleep_for(200ms);
  auto status = s->srv.stop(1, 20s);
  first_thread.join();
  replay_thread.join();
  CHECK(WIFEXITED(status));
  INFO("first: " << first.status << " " << first.body);
  INFO("replay: " << replay.status << " " << replay.body);
  CHECK(first.status == 201);
  CHECK(replay.status == first.status);
  CHECK(replay.body == first.body);

  s->srv.start();
  http_client after{s->srv.port()};
  auto later = after.post_json("/todo", body, {{"Idempotency-Key", key}});
  CHECK(later.status == first.status);
  CHECK(later.body == first.body);
  CHECK(all_head(after) == head_before + 1);
}

TEST_CASE("unit-of-work: a keyed write unanswered when SIGTERM comes is answered 202 before the "
          "drain's deadline though the log writer is slow to record a status, whether it waits "
          "for the read model or its own status is being recorded",
          "[e2e][modes][unit-of-work][postgres-down][idempotency][shutdown]") {
  // Still waiting for a hung PostgreSQL, or past that wait, its 201 on the
  // way into the log.
  bool recording = GENERATE(false, true);
  CAPTURE(recording);
  // The log writer takes 2 s to record an answer's status, longer than the
  // whole drain (1.5 s): the 202 goes out unrecorded at half of it.
  std::optional<server_behind_proxy> s;
  auto head_before = start_unit_of_work(s, "log-writer.slow-answer-record", "1500");
  http_client c{s->srv.port()};
  if (!recording)
    s->proxy.stall();
  response answered;
  std::atomic<bool> got{false};
  std::thread writer{[&] {
    http_client wc{s->srv.port()};
    answered = wc.post_json("/todo", {{"description", "keyed, durable, unanswered at the stop"}},
                            {{"Idempotency-Key", random_uuid()}});
    got = true;
  }};
  REQUIRE(eventually([&] { return all_head(c) > head_before; }, 5000ms, 10ms));
  if (recording) {
    // The read model has it: the write's wait ends, its 201 is being recorded.
    REQUIRE(read_model_past(c, head_before));
    std::this_thread::sleep_for(100ms);
  }
  auto t0 = std::chrono::steady_clock::now();
  std::thread stopper{[&] { s->srv.stop(1, 15s); }};
  while (!got && std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(20ms);
  auto took = std::chrono::steady_clock::now() - t0;
  writer.join();
  stopper.join();
  s->proxy.restore();
  INFO("answer: " << answered.status << " " << answered.body);
  CHECK(answered.status == 202); // not the drain deadline's 503 (at 1.5 s)
  CHECK(took >= 600ms);          // it waited for the log writer first (0.75 s)
}

TEST_CASE("unit-of-work: a keyed create answered 201 just before a kill -9 replays 201 after the "
          "restart, also with PostgreSQL unreachable: its status was recorded before it was sent",
          "[e2e][modes][unit-of-work][idempotency][crash]") {
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=1500"}};
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    // Six keyed creates at once; the process dies as the first answer arrives.
    constexpr int writers = 6;
    std::vector<std::string> keys;
    for (int i = 0; i < writers; ++i)
      keys.push_back(random_uuid());
    auto body_of = [&](int i) {
      return json{{"description", "round " + std::to_string(round) + " writer " + std::to_string(i)}};
    };
    std::vector<response> answers(writers);
    std::atomic<int> answered{0};
    std::vector<std::thread> threads;
    auto port = s.srv.port();
    for (int i = 0; i < writers; ++i)
      threads.emplace_back([&, i] {
        try {
          http_client wc{port};
          answers[i] = wc.post_json("/todo", body_of(i), {{"Idempotency-Key", keys[i]}});
          if (answers[i].status == 201)
            ++answered;
        } catch (const std::exception&) {
          // cut off by the kill: no answer
        }
      });
    bool got_one = eventually([&] { return answered.load() > 0; }, 10000ms, 1ms);
    s.srv.kill();
    for (auto& t : threads)
      t.join();
    REQUIRE(got_one);

    s.proxy.cut();
    s.srv.start();
    http_client c{s.srv.port()};
    for (int i = 0; i < writers; ++i) {
      if (answers[i].status != 201)
        continue;
      auto replay = c.post_json("/todo", body_of(i), {{"Idempotency-Key", keys[i]}});
      INFO("writer " << i << ": first " << answers[i].body << "; replay " << replay.status << " "
                     << replay.body);
      CHECK(replay.status == 201);
      CHECK(replay.body == answers[i].body);
    }
    s.proxy.restore();
  }
}

TEST_CASE("unit-of-work: replays of a request answered by an earlier process (its answer never "
          "recorded) all answer as the first of them did",
          "[e2e][modes][unit-of-work][postgres-down][idempotency]") {
  // The first request's answer is not recorded when the server is killed
  // between its append and its answer: here the request waits for a
  // PostgreSQL that is not there, and the server is killed meanwhile.
  server_behind_proxy s{{"--projection.mode=unit-of-work", "--projection.uow-timeout-ms=1000"}};
  http_client c{s.srv.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the cut"}}).status == 201);
  auto head_before = all_head(c);
  json body{{"description", "keyed, then killed"}};
  auto key = random_uuid();
  s.proxy.cut();
  std::thread first_thread{[&] {
    http_client fc{s.srv.port()};
    try {
      fc.post_json("/todo", body, {{"Idempotency-Key", key}});
    } catch (const std::exception&) {
      // the server was killed under it
    }
  }};
  REQUIRE(eventually([&] { return all_head(c) > head_before; }, 5000ms, 10ms));
  s.srv.kill(); // well within the first request's 1 s wait
  first_thread.join();
  s.srv.start();
  http_client c2{s.srv.port()};
  // PostgreSQL still out of reach: the first replay waits, answers 202 and
  // records it; PostgreSQL back: later replays still answer 202.
  auto r1 = c2.post_json("/todo", body, {{"Idempotency-Key", key}});
  REQUIRE(r1.status == 202);
  s.proxy.restore();
  REQUIRE(eventually([&] { return c2.get("/readyz").status == 200; }, 20000ms, 100ms));
  auto id = ack_of(r1).id;
  REQUIRE(c2.get("/todo/" + id + "?minPosition=" + std::to_string(ack_of(r1).position)).status
          == 200);
  auto r2 = c2.post_json("/todo", body, {{"Idempotency-Key", key}});
  CHECK(r2.status == 202);
  CHECK(r2.body == r1.body);
}

TEST_CASE("eventual: writes while PostgreSQL is down are accepted and the read model catches up "
          "when it returns",
          "[e2e][modes][eventual][postgres-down]") {
  server_behind_proxy s{{"--projection.mode=eventual"}};
  http_client c{s.srv.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "eventual before"}}));
  s.proxy.cut();
  std::vector<json> expected;
  uint64_t last = a.position;
  for (int i = 0; i < 10; ++i) {
    auto r = c.post_json("/todo", {{"description", "eventual during " + std::to_string(i)}});
    INFO("write during the outage answered " << r.status << ": " << r.body);
    REQUIRE(r.status == 201);
    auto w = ack_of(r);
    expected.push_back(todo_state(w.id, "eventual during " + std::to_string(i), "Created", 1));
    last = w.position;
  }
  auto d = c.put("/todo/" + a.id + "/done");
  REQUIRE(d.status == 200);
  last = ack_of(d).position;
  expected.push_back(todo_state(a.id, "eventual before", "Done", 2));
  s.proxy.restore();
  auto l = c.get("/todo?limit=1000&waitMs=20000&minPosition=" + std::to_string(last));
  INFO("after the outage: " << l.status << " " << l.body);
  REQUIRE(l.status == 200);
  auto items = l.json_body()["items"];
  CHECK(items.size() == expected.size());
  for (auto& t : expected) {
    bool found = false;
    for (auto& i : items)
      found = found || i == t;
    CHECK(found);
  }
}

TEST_CASE("eventual, PostgreSQL down: /metrics shows the lag growing; a minPosition the read model "
          "had reached answers at once (503 naming PostgreSQL), not after waitMs",
          "[e2e][modes][eventual][postgres-down]") {
  server_behind_proxy s{{"--projection.mode=eventual"}};
  http_client c{s.srv.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "seen before the outage"}}));
  REQUIRE(c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)).status == 200);
  s.proxy.cut();
  for (int i = 0; i < 5; ++i)
    REQUIRE(c.post_json("/todo", {{"description", "unseen " + std::to_string(i)}}).status == 201);
  auto lag = [&] {
    auto text = c.get("/metrics").body;
    auto at = text.find("\neventsd_projection_lag_events ");
    return at == std::string::npos ? -1 : std::stol(text.substr(at + 31));
  };
  CHECK(lag() == 5); // at once, computed when scraped
  // The age of the oldest unapplied event keeps growing without more writes
  // (an alert on it must fire during an outage).
  auto lag_seconds = [&] {
    auto text = c.get("/metrics").body;
    auto at = text.find("\neventsd_projection_lag_seconds ");
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + 32));
  };
  auto first_seconds = lag_seconds();
  std::this_thread::sleep_for(1500ms);
  auto later_seconds = lag_seconds();
  INFO("lag " << first_seconds << " s, 1.5 s later " << later_seconds << " s");
  CHECK(later_seconds - first_seconds >= 1.4);
  CHECK(later_seconds - first_seconds < 3.0);

  auto t0 = std::chrono::steady_clock::now();
  auto r = c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position) + "&waitMs=5000");
  auto took = std::chrono::steady_clock::now() - t0;
  INFO("answered " << r.status << ": " << r.body);
  CHECK(r.status == 503);
  CHECK(r.header("Retry-After"));
  CHECK(r.json_body().value("detail", "").find("unavailable") != std::string::npos);
  CHECK(took < 3s); // not the 5 s of waitMs
}

TEST_CASE("an unknown projection mode stops eventsd at start with a message naming the modes",
          "[e2e][modes]") {
  REQUIRE_THROWS_WITH(server{server_options::with_args({"--projection.mode=sometimes"})},
                      Catch::Contains("exited before listening")
                        && Catch::Contains("eventual, unit-of-work, on-demand or scheduled"));
}
