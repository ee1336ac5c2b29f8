// API.md §3 admin routes against the real eventsd: Authorization: Bearer with
// --http.admin-token, 403 on a non-loopback address without a token, the shape
// of GET /admin/projections, and POST /admin/projections/todos/rebuild (202,
// progress visible, reads keep working, the rebuilt read model equals the old
// one), unknown projection 404.
#include "http_support.hpp"
#include "e2e/log_fold.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

namespace {

const header_list bearer{{"Authorization", "Bearer secret"}};

void check_unauthorized(const response& r) {
  check_problem(r, 401);
  auto challenge = r.header("WWW-Authenticate").value_or("");
  CHECK(challenge.rfind("Bearer", 0) == 0);
}

} // namespace

TEST_CASE("--http.admin-token: admin routes need Authorization: Bearer <token>",
          "[http][admin][auth]") {
  server s{server_options::with_args({"--http.admin-token=secret"})};
  http_client c{s.port()};

  for (auto& header : std::vector<header_list>{
         {},
         {{"Authorization", "Bearer wrong"}},
         {{"Authorization", "Bearer secretx"}},
         {{"Authorization", "Bearer secre"}},
         {{"Authorization", "Bearer "}},
         {{"Authorization", "Bearer"}},
         {{"Authorization", "secret"}},
         {{"Authorization", "Basic c2VjcmV0"}}, // "secret"
         {{"Authorization", "Basic YWRtaW46c2VjcmV0"}}, // "admin:secret"
         {{"X-Admin-Token", "secret"}},
       }) {
    INFO("headers: " << (header.empty() ? "none" : header[0].first + ": " + header[0].second));
    check_unauthorized(c.get("/admin/projections", header));
    check_unauthorized(c.request("POST", "/admin/projections/todos/rebuild", std::nullopt, header));
    // Authentication comes first: no projection names leak.
    check_unauthorized(c.request("POST", "/admin/projections/nope/rebuild", std::nullopt, header));
  }
  auto ok = c.get("/admin/projections", bearer);
  CHECK(ok.status == 200);
  CHECK(media_type(ok) == "application/json");
  // Other routes need no token.
  CHECK(c.get("/healthz").status == 200);
  CHECK(c.get("/streams/$all").status == 200);
  CHECK(c.post_json("/todo", {{"description", "no token needed"}}).status == 201);
}

// RFC 9110 §6.5.1: a trailer field is not merged into the header section, so
// a proxy that checks Authorization in the header section cannot be bypassed.
TEST_CASE("--http.admin-token: an Authorization field in a chunked body's trailer authorizes "
          "nothing",
          "[http][admin][auth]") {
  server s{server_options::with_args({"--http.admin-token=secret"})};
  for (const char* target : {"GET /admin/projections", "POST /admin/projections/todos/rebuild"}) {
    INFO(target);
    auto raw = raw_exchange(s.port(), std::string{target}
                                        + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          "0\r\nAuthorization: Bearer secret\r\n\r\n");
    check_unauthorized(parse_response(raw));
  }
}

// RFC 9110 §11.1: the authentication scheme is case-insensitive; §11.4: one or
// more spaces separate it from the token.
TEST_CASE("--http.admin-token: the Bearer scheme is matched case-insensitively, followed by "
          "one or more spaces",
          "[http][admin][auth]") {
  server s{server_options::with_args({"--http.admin-token=secret"})};
  http_client c{s.port()};
  CHECK(c.get("/admin/projections", {{"Authorization", "bearer secret"}}).status == 200);
  CHECK(c.get("/admin/projections", {{"Authorization", "BEARER secret"}}).status == 200);
  CHECK(c.get("/admin/projections", {{"Authorization", "Bearer   secret"}}).status == 200);
  check_unauthorized(c.get("/admin/projections", {{"Authorization", "Bearer\tsecret"}}));
}

TEST_CASE("without a token, admin routes are refused (403) when listening on a non-loopback "
          "address, and open on loopback",
          "[http][admin][auth]") {
  SECTION("0.0.0.0 without a token: 403") {
    // Binds every interface; the test talks to it over 127.0.0.1 only.
    server s{server_options::with_args({"--http.address=0.0.0.0"})};
    REQUIRE(s.output().find("listening on http://0.0.0.0:") != std::string::npos);
    http_client c{s.port()};
    check_problem(c.get("/admin/projections"), 403);
    check_problem(c.get("/admin/projections", bearer), 403);
    check_problem(c.request("POST", "/admin/projections/todos/rebuild"), 403);
    check_problem(c.request("POST", "/admin/projections/nope/rebuild", std::nullopt, bearer), 403);
    CHECK(c.get("/healthz").status == 200);
    CHECK(c.post_json("/todo", {{"description", "writes still work"}}).status == 201);
  }
  SECTION("0.0.0.0 with a token: the token decides") {
    server s{server_options::with_args({"--http.address=0.0.0.0", "--http.admin-token=secret"})};
    http_client c{s.port()};
    check_unauthorized(c.get("/admin/projections"));
    CHECK(c.get("/admin/projections", bearer).status == 200);
  }
  SECTION("loopback without a token: open") {
    server s;
    http_client c{s.port()};
    CHECK(c.get("/admin/projections").status == 200);
  }
}

TEST_CASE("without a token, a loopback server's admin routes refuse (403) a request naming "
          "another host or sent from another origin: a web page or a rebound DNS name in a "
          "browser here cannot use them",
          "[http][admin][auth]") {
  server s;
  http_client c{s.port()};
  auto port = std::to_string(s.port());
  for (const header_list& h : std::vector<header_list>{
         {{"Host", "evil.example:" + port}},
         {{"Host", "127.0.0.1.nip.io:" + port}},
         {{"Origin", "http://evil.example"}},
         {{"Origin", "null"}},
         {{"Host", "localhost:" + port}, {"Origin", "https://evil.example:" + port}},
       }) {
    INFO(h.front().first << ": " << h.front().second << (h.size() > 1 ? " + " + h.back().second : ""));
    auto r = c.get("/admin/projections", h);
    check_problem(r, 403);
    CHECK(r.json_body()["detail"].get<std::string>().find("no other origin") != std::string::npos);
    // The cross-site form a browser sends without a preflight: refused, no rebuild.
    header_list post = h;
    post.push_back({"Content-Type", "text/plain"});
    check_problem(c.request("POST", "/admin/projections/todos/rebuild", "x", post), 403);
  }
  CHECK(projection_status(c, {}).at("rebuild").at("active") == false);
  // This machine's names and addresses, and its own pages (Swagger UI's POST).
  for (const header_list& h : std::vector<header_list>{
         {{"Host", "localhost:" + port}},
         {{"Host", "LOCALHOST"}},
         {{"Host", "[::1]:" + port}},
         {{"Host", "127.0.0.2:" + port}},
         {{"Origin", "http://127.0.0.1:" + port}},
         {{"Host", "localhost:" + port}, {"Origin", "http://localhost:" + port}},
       }) {
    INFO(h.front().first << ": " << h.front().second);
    CHECK(c.get("/admin/projections", h).status == 200);
  }
  // Other routes do not care.
  CHECK(c.get("/healthz", {{"Host", "evil.example"}}).status == 200);
}

TEST_CASE("GET /admin/projections: name, mode, position, head, lag, state", "[http][admin]") {
  for (std::string mode : {"eventual", "scheduled"}) {
    INFO("--projection.mode=" << mode);
    server s{server_options::with_args({"--projection.mode=" + mode,
                                        "--projection.interval-ms=100"})};
    http_client c{s.port()};
    auto batch = create_todos(s.port(), 2, 10, "status");
    uint64_t head = 20;
    auto st = projection_status(c, {});
    for (auto key : {"name", "mode", "position", "head", "lag", "state"})
      CHECK(st.contains(key));
    CHECK(st["name"] == "todos");
    CHECK(st["mode"] == mode);
    CHECK(st["position"].is_number_unsigned());
    CHECK(st["head"] == head);
    CHECK(st["lag"].is_number_unsigned());
    CHECK(st["lag"].get<uint64_t>() == head - st["position"].get<uint64_t>());
    CHECK(st["state"].is_string());
    std::set<std::string> states{"live", "catching-up", "waiting", "error"};
    CHECK(states.count(st.value("state", std::string{})) == 1);
    // Caught up: position = head, lag 0, live.
    CHECK(eventually([&] { return projection_status(c, {})["position"] == head; }, 10000ms, 20ms));
    st = projection_status(c, {});
    CHECK(st["lag"] == 0);
    CHECK(st["state"] == "live");
  }
}

TEST_CASE("POST /admin/projections/todos/rebuild: 202, progress visible, reads keep working, "
          "the rebuilt read model equals the old one",
          "[http][admin][rebuild]") {
  // Rebuild transactions of 25 events: 256 steps for the 6400 events below,
  // so that the poller sees the rebuild part of the way through and the
  // second rebuild request below finds the first still running (with 200 a
  // loaded machine once saw the first finish before the second arrived).
  server s{server_options::with_args(
    {"--http.admin-token=secret", "--projection.rebuild-batch-size=25"})};
  http_client c{s.port()};

  // Many more events than one rebuild batch, so the rebuild takes several steps.
  std::vector<std::string> sample_ids;
  auto batch = parallel_writes(s.port(), 4, 1600, [](http_client& w, size_t t, size_t i) {
    static thread_local std::string id;
    static thread_local write_ack first;
    switch (i % 4) {
      case 0: {
        auto r = w.post_json("/todo", {{"description", "rebuild " + std::to_string(t) + "/"
                                                         + std::to_string(i)}});
        if (r.status == 201)
          first = ack_of(r), id = first.id;
        return r;
      }
      case 1:
        return w.put("/todo/" + id + "/put-in-progress");
      case 2:
        return (i / 4) % 3 == 0
                 ? w.put_json("/todo/change-description",
                              {{"id", id}, {"description", "changed " + std::to_string(i)}})
                 : w.put("/todo/" + id + "/done");
      default: {
        if ((i / 4) % 5 != 0)
          return w.put("/todo/" + id + "/done");
        auto h = w.get("/todo/" + id + "/history").json_body();
        return w.put("/todo/" + id + "/undo-to/" + h["items"][0]["id"].get<std::string>());
      }
    }
  });
  REQUIRE(batch.acks.size() == 6400);
  uint64_t head = all_head(c);
  REQUIRE(head == 6400);
  auto before = list_read_model(c, head);
  REQUIRE(before.size() == 1600);
  for (auto& [id, t] : before)
    if (sample_ids.size() < 20)
      sample_ids.push_back(id);
  // The read model is the fold of the log: spot-check against history.
  for (auto& id : sample_ids) {
    auto h = c.get("/todo/" + id + "/history").json_body();
    CHECK(before[id] == h["items"].back()["snapshot"]);
  }
  auto st = projection_status(c, bearer);
  CHECK(st["rebuild"]["active"] == false);
  auto completed_before = st["rebuild"]["completed"].get<uint64_t>();

  // Readers poll the read model all through the rebuild.
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, bad_reads{0};
  std::string first_bad;
  std::mutex bad_mtx;
  std::thread reader{[&] {
    http_client rc{s.port()};
    size_t k = 0;
    while (!stop) {
      auto& id = sample_ids[k++ % sample_ids.size()];
      auto one = rc.get("/todo/" + id);
      auto list = rc.get("/todo?limit=10");
      ++reads;
      bool ok = one.status == 200 && one.json_body() == before[id] && list.status == 200
                && list.json_body()["items"].size() == 10;
      if (!ok) {
        ++bad_reads;
        std::lock_guard lock{bad_mtx};
        if (first_bad.empty())
          first_bad = std::to_string(one.status) + " " + one.body + " / " + std::to_string(list.status)
                      + " " + list.body.substr(0, 200);
      }
    }
  }};

  // Progress is polled from before the rebuild starts until it has completed.
  std::vector<json> progress;
  std::atomic<bool> finished{false};
  std::thread poller{[&] {
    http_client pc{s.port()};
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = pc.get("/admin/projections", bearer);
      if (r.status == 200) {
        auto p = r.json_body()["items"][0];
        progress.push_back(p["rebuild"]);
        if (p["rebuild"]["active"] == false
            && p["rebuild"]["completed"].get<uint64_t>() == completed_before + 1) {
          finished = true;
          return;
        }
      }
      std::this_thread::sleep_for(2ms);
    }
  }};

  auto started = c.request("POST", "/admin/projections/todos/rebuild", std::nullopt, bearer);
  INFO("rebuild answered " << started.status << ": " << started.body);
  REQUIRE(started.status == 202);
  CHECK(started.header("Location") == "/admin/projections");
  CHECK(media_type(started) == "application/json");
  CHECK(started.json_body()["name"] == "todos");
  // A second rebuild while one runs: 409.
  check_problem(c.request("POST", "/admin/projections/todos/rebuild", std::nullopt, bearer), 409);

  // A write during the rebuild lands in the rebuilt model too.
  auto during = c.post_json("/todo", {{"description", "written during the rebuild"}});
  REQUIRE(during.status == 201);
  auto during_ack = ack_of(during);

  poller.join();
  stop = true;
  reader.join();
  INFO("rebuild progress seen: " << json(progress).dump().substr(0, 2000));
  REQUIRE(finished);
  // Progress was visible while it ran: active, part of the way to the head.
  bool saw_progress = false;
  for (auto& p : progress) {
    if (p["active"] == true) {
      CHECK(p["position"].get<uint64_t>() <= p["head"].get<uint64_t>());
      if (p["position"].get<uint64_t>() > 0 && p["position"].get<uint64_t>() < p["head"].get<uint64_t>())
        saw_progress = true;
    }
  }
  CHECK(saw_progress);

  // Reads never failed.
  INFO("reads during the rebuild: " << reads << ", bad: " << bad_reads << " first: " << first_bad);
  CHECK(reads > 0);
  CHECK(bad_reads == 0);

  // The rebuilt read model equals the old one (plus the write made during the rebuild).
  auto after = list_read_model(c, during_ack.position);
  auto expected = before;
  expected[during_ack.id] = {{"id", during_ack.id},
                             {"description", "written during the rebuild"},
                             {"status", "Created"},
                             {"version", 1}};
  CHECK(after.size() == expected.size());
  size_t differing = 0;
  for (auto& [id, t] : expected)
    if (after[id] != t)
      ++differing;
  CHECK(differing == 0);
  st = projection_status(c, bearer);
  CHECK(st["position"] == head + 1);
  CHECK(st["lag"] == 0);
  CHECK(st["state"] == "live");
  // And it keeps projecting.
  auto w = c.put("/todo/" + during_ack.id + "/done");
  REQUIRE(w.status == 200);
  auto r = c.get("/todo/" + during_ack.id + "?minPosition=" + std::to_string(ack_of(w).position));
  REQUIRE(r.status == 200);
  CHECK(r.json_body()["status"] == "Done");
}

TEST_CASE("POST /admin/projections/{name}/rebuild: an unknown projection is a 404",
          "[http][admin][rebuild]") {
  server s{server_options::with_args({"--http.admin-token=secret"})};
  http_client c{s.port()};
  for (auto name : {"nope", "TODOS", "todos2", "%24all"}) {
    INFO("name " << name);
    check_problem(c.request("POST", std::string{"/admin/projections/"} + name + "/rebuild",
                            std::nullopt, bearer),
                  404);
  }
  auto wrong_method = c.get("/admin/projections/todos/rebuild", bearer);
  check_problem(wrong_method, 405);
  CHECK(wrong_method.header("Allow").value_or("").find("POST") != std::string::npos);
  CHECK(projection_status(c, bearer)["rebuild"]["completed"] == 0);
}

TEST_CASE("POST /admin/projections/todos/rebuild ignores a body, unless it says it is JSON and "
          "is not: a 400 that starts nothing",
          "[http][admin][rebuild]") {
  server s{server_options::with_args({"--http.admin-token=secret"})};
  http_client c{s.port()};
  auto with_type = [](const char* type) {
    auto h = bearer;
    h.emplace_back("Content-Type", type);
    return h;
  };
  for (std::string broken : {"{\"x\"", "now", "{\"x\":\"\xff\"}"})
    check_problem(c.request("POST", "/admin/projections/todos/rebuild", broken,
                            with_type("application/json")),
                  400);
  auto status = projection_status(c, bearer);
  CHECK(status["rebuild"]["active"] == false);
  CHECK(status["rebuild"]["completed"] == 0);
  CHECK(c.request("POST", "/admin/projections/todos/rebuild", std::string{"now"},
                  with_type("text/plain"))
          .status
        == 202);
}

TEST_CASE("/admin/projections and /metrics: while PostgreSQL has not been reached since the "
          "start, the position and lag are unknown (null, no sample), not 0 and the whole log",
          "[http][admin]") {
  server s{server_options::without_postgres({})};
  http_client c{s.port()};
  REQUIRE(c.post_json("/todo", {{"description", "not projected"}}).status == 201);
  auto st = projection_status(c, {});
  CHECK(st["position"].is_null());
  CHECK(st["lag"].is_null());
  CHECK(st["lagMs"].is_null());
  CHECK(st["head"] == 1);
  CHECK(st["connected"] == false);
  CHECK(st["lastError"].is_string());
  auto metrics = c.get("/metrics");
  REQUIRE(metrics.status == 200);
  for (std::string family : {"eventsd_projection_position", "eventsd_projection_lag_events",
                             "eventsd_projection_lag_seconds"}) {
    INFO(family);
    CHECK(metrics.body.find("# TYPE " + family + " gauge\n") != std::string::npos);
    CHECK(metrics.body.find("\n" + family + " ") == std::string::npos);
  }
  CHECK(metrics.body.find("\neventsd_log_head_position 1\n") != std::string::npos);
  CHECK(metrics.body.find("\neventsd_projection_position_known 0\n") != std::string::npos);
}
