// API.md §3 operations against the real eventsd: /healthz, /readyz (ready with
// PostgreSQL; 503 problem+json with a reason when the DSN points at a closed
// port or PostgreSQL goes away), and /metrics in the Prometheus text format,
// checked by Prometheus's own `promtool check metrics` (EVENTSD_PROMTOOL) and
// for the families API.md names.
#include "http_support.hpp"

#include <catch2/catch.hpp>

#include <cstring>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

namespace {

void check_ready(const response& r) {
  INFO("/readyz answered " << r.status << ": " << r.body);
  REQUIRE(r.status == 200);
  CHECK(media_type(r) == "application/json");
  auto j = r.json_body();
  CHECK(j.value("status", std::string{}) == "ready");
}

/// Checks a 503 answer of /readyz: a problem whose detail gives the reason.
void check_not_ready(const response& r) {
  check_problem(r, 503);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  auto detail = j.value("detail", std::string{});
  INFO("detail: " << detail);
  CHECK(detail.find("PostgreSQL") != std::string::npos);
}

/// `promtool check metrics` over `text`.
command_result promtool_check(const std::string& text) {
  temp_dir dir{"eventsd-http-metrics-"};
  auto file = write_temp_file(dir, "metrics.txt", text);
  return run_command({require_env("EVENTSD_PROMTOOL"), "check", "metrics"},
                     {.timeout = 30s, .stdin_file = file});
}

} // namespace

TEST_CASE("/healthz answers 200 while the process serves", "[http][ops]") {
  server s;
  http_client c{s.port()};
  auto r = c.get("/healthz");
  CHECK(r.status == 200);
  CHECK(media_type(r) == "application/json");
  // Also on a server whose PostgreSQL is unreachable: health is about the process.
  server_options o;
  o.dsn = dsn_with_host_port(test_dsn(), "127.0.0.1", free_port()) + " connect_timeout=1";
  server down{o};
  http_client d{down.port()};
  CHECK(d.get("/healthz").status == 200);
}

TEST_CASE("/readyz: 200 with PostgreSQL up, 503 problem+json with a reason when the DSN points "
          "at a closed port",
          "[http][ops][readyz]") {
  {
    server s;
    http_client c{s.port()};
    CHECK(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 50ms));
    check_ready(c.get("/readyz"));
    // The readers connect at their first read; then they are known to be "ok".
    REQUIRE(c.get("/todo").status == 200);
    auto ready = c.get("/readyz").json_body();
    CHECK(ready["readModelReaders"] == "ok");
    // The checks are also where a 503 has them: one shape to read for both.
    CHECK(ready["checks"] == json{{"eventStore", "open"}, {"postgres", "reachable"},
                                  {"readModel", "ok"}, {"readModelReaders", "ok"}});
  }
  server_options o;
  o.dsn = dsn_with_host_port(test_dsn(), "127.0.0.1", free_port()) + " connect_timeout=1";
  server s{o};
  http_client c{s.port()};
  // Never ready, however long we look; the readers, which have not tried, are not "ok".
  for (int i = 0; i < 5; ++i) {
    auto r = c.get("/readyz");
    check_not_ready(r);
    CHECK(r.json_body()["checks"]["readModelReaders"] == "unknown");
    sleep_for(200ms);
  }
}

// libpq notices a lost server only when a connection is used, and an idle
// projection uses none: readiness must probe (fixed in bd377fc; this guards it).
TEST_CASE("/readyz follows PostgreSQL going away and coming back while the server is idle",
          "[http][ops][readyz]") {
  test_database db;
  auto [pg_host, pg_port] = host_port_of(db.dsn());
  tcp_proxy proxy{pg_host, pg_port};
  server_options o;
  o.dsn = dsn_with_host_port(db.dsn(), "127.0.0.1", proxy.port()) + " connect_timeout=2";
  server s{o};
  http_client c{s.port()};
  auto w = c.post_json("/todo", {{"description", "before the outage"}});
  REQUIRE(w.status == 201);
  // The read model has applied it: from here on the projection has nothing to do.
  REQUIRE(c.get("/todo/" + ack_of(w).id + "?minPosition=1").status == 200);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 50ms));

  proxy.cut(); // PostgreSQL is unreachable; no writes from here on
  bool noticed = eventually([&] { return c.get("/readyz").status == 503; }, 4000ms, 100ms);
  INFO("/readyz still answers " << c.get("/readyz").status << " 4 s after PostgreSQL went away");
  REQUIRE(noticed);
  check_not_ready(c.get("/readyz"));

  proxy.restore();
  CHECK(eventually([&] { return c.get("/readyz").status == 200; }, 20000ms, 100ms));
}

TEST_CASE("/metrics: Prometheus text format (promtool check metrics) with the families of API.md",
          "[http][ops][metrics]") {
  server s;
  http_client c{s.port()};

  // Traffic of several routes and statuses.
  auto created = c.post_json("/todo", {{"description", "measure me"}});
  REQUIRE(created.status == 201);
  auto a = ack_of(created);
  REQUIRE(c.put("/todo/" + a.id + "/put-in-progress").status == 200);
  auto done = c.put("/todo/" + a.id + "/done");
  REQUIRE(done.status == 200);
  auto head = ack_of(done).position;
  REQUIRE(c.get("/todo/" + a.id + "?minPosition=" + std::to_string(head)).status == 200);
  auto batch = create_todos(s.port(), 4, 25, "metrics");
  head += 100;
  REQUIRE(c.get("/todo/" + random_uuid()).status == 404);
  REQUIRE(c.get("/todo/" + random_uuid() + "/history").status == 404);
  REQUIRE(c.get("/streams/$all?limit=5").status == 200);
  REQUIRE(c.get("/no/such/route").status == 404);
  REQUIRE(c.post_json("/todo", {{"description", "x"}}).status == 400);
  REQUIRE(c.request("DELETE", "/todo").status == 405);

  // The read model catches up: projection position = head, lag 0.
  prom_exposition m;
  std::string text;
  bool caught_up = eventually(
    [&] {
      auto r = c.get("/metrics");
      if (r.status != 200)
        return false;
      text = r.body;
      m = parse_prometheus(text);
      return m.value("eventsd_projection_position") == static_cast<double>(head)
             && m.value("eventsd_projection_lag_events") == 0;
    },
    10000ms, 50ms);
  INFO(text.substr(0, 20000));
  CHECK(caught_up);
  REQUIRE(c.get("/streams/$all?limit=1").status == 200);

  auto r = c.get("/metrics");
  REQUIRE(r.status == 200);
  auto type = r.header("Content-Type").value_or("");
  CHECK(type.rfind("text/plain", 0) == 0);
  CHECK(type.find("version=0.0.4") != std::string::npos);
  text = r.body;
  m = parse_prometheus(text);

  // Prometheus's own parser: exit 1 is a format error, 3 only lint findings
  // (naming conventions, checked by the next test case).
  auto checked = promtool_check(text);
  INFO("promtool check metrics (exit " << checked.exit_code() << "):\n" << checked.output);
  CHECK((checked.exit_code() == 0 || checked.exit_code() == 3));
  CHECK(checked.output.find("error while linting") == std::string::npos);
  CHECK(checked.output.find("parsing error") == std::string::npos);

  // Requests by route and status.
  CHECK(m.types["eventsd_http_requests_total"] == "counter");
  CHECK(m.value("eventsd_http_requests_total",
                {{"method", "POST"}, {"route", "/todo"}, {"status", "201"}})
        == 101);
  CHECK(m.value("eventsd_http_requests_total",
                {{"method", "POST"}, {"route", "/todo"}, {"status", "400"}})
        == 1);
  CHECK(m.value("eventsd_http_requests_total",
                {{"method", "GET"}, {"route", "/todo/{id}"}, {"status", "404"}})
        == 1);
  CHECK(m.value("eventsd_http_requests_total",
                {{"method", "PUT"}, {"route", "/todo/{id}/done"}, {"status", "200"}})
        == 1);
  CHECK(m.find("eventsd_http_requests_total", {{"status", "405"}}).size() == 1);
  // `$all` is a route of its own, as in the OpenAPI document.
  CHECK(m.value("eventsd_http_requests_total",
                {{"method", "GET"}, {"route", "/streams/$all"}, {"status", "200"}})
        >= 1);
  // Routes are patterns, never raw paths (bounded label values).
  bool bounded = true;
  for (auto& sample : m.samples)
    for (auto& [k, v] : sample.labels)
      bounded = bounded && v.find(a.id) == std::string::npos
                && v.find("/no/such/route") == std::string::npos;
  CHECK(bounded);

  // Latency histograms by route: cumulative buckets, +Inf = count = requests.
  CHECK(m.types["eventsd_http_request_duration_seconds"] == "histogram");
  auto buckets = m.find("eventsd_http_request_duration_seconds_bucket",
                        {{"method", "POST"}, {"route", "/todo"}});
  REQUIRE(buckets.size() >= 2);
  bool cumulative = true;
  for (size_t i = 1; i < buckets.size(); ++i)
    cumulative = cumulative && buckets[i].value >= buckets[i - 1].value;
  CHECK(cumulative);
  CHECK(buckets.back().labels["le"] == "+Inf");
  auto count = m.value("eventsd_http_request_duration_seconds_count",
                       {{"method", "POST"}, {"route", "/todo"}});
  CHECK(buckets.back().value == count);
  CHECK(count == 102);
  CHECK(m.value("eventsd_http_request_duration_seconds_sum",
                {{"method", "POST"}, {"route", "/todo"}})
        > 0);

  // Events appended, fsync batches and their sizes.
  CHECK(m.types["eventsd_events_appended_total"] == "counter");
  CHECK(m.value("eventsd_events_appended_total") == static_cast<double>(head));
  auto batches = m.value("eventsd_fsync_batches_total");
  CHECK(m.types["eventsd_fsync_batches_total"] == "counter");
  CHECK(batches >= 1);
  CHECK(batches <= static_cast<double>(head));
  CHECK(m.types["eventsd_fsync_batch_events"] == "histogram");
  CHECK(m.value("eventsd_fsync_batch_events_count") == batches);
  CHECK(m.value("eventsd_fsync_batch_events_sum") == static_cast<double>(head));
  CHECK(m.value("eventsd_fsync_batch_events_bucket", {{"le", "+Inf"}}) == batches);

  // Live aggregate actors: the 101 todos just written are alive.
  CHECK(m.types["eventsd_live_aggregates"] == "gauge");
  CHECK(m.value("eventsd_live_aggregates") >= 1);
  CHECK(m.value("eventsd_live_aggregates") <= 101);

  // Projection position and lag.
  CHECK(m.types["eventsd_projection_position"] == "gauge");
  CHECK(m.types["eventsd_projection_lag_events"] == "gauge");
  CHECK(m.value("eventsd_projection_position") == static_cast<double>(head));
  CHECK(m.value("eventsd_projection_position_known") == 1);
  CHECK(m.value("eventsd_projection_lag_events") == 0);
  CHECK(m.types["eventsd_projection_lag_seconds"] == "gauge");
  CHECK(m.value("eventsd_projection_lag_seconds") == 0);
  // Every applied event's append → visible time, once each.
  CHECK(m.types["eventsd_projection_visible_seconds"] == "histogram");
  CHECK(m.value("eventsd_projection_visible_seconds_count") == static_cast<double>(head));
  CHECK(m.value("eventsd_projection_visible_seconds_bucket", {{"le", "+Inf"}})
        == static_cast<double>(head));
  CHECK(m.value("eventsd_projection_visible_seconds_sum") >= 0);

  // Every sample belongs to a family with a TYPE and a HELP.
  bool typed = true;
  for (auto& sample : m.samples) {
    auto family = sample.name;
    for (auto suffix : {"_bucket", "_sum", "_count"})
      if (!m.types.count(family) && family.size() > std::strlen(suffix)
          && family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family = family.substr(0, family.size() - std::strlen(suffix));
    if (!m.types.count(family) || !m.help.count(family)) {
      INFO("sample without TYPE/HELP: " << sample.name);
      typed = false;
    }
  }
  CHECK(typed);
}

TEST_CASE("/metrics: made-up HTTP methods (501) share the method label \"other\", a 413 is counted "
          "under its route, and the log head is known from the start, before any write",
          "[http][ops][metrics]") {
  server s;
  {
    http_client c{s.port()};
    create_todos(s.port(), 1, 3, "head");
    for (int i = 0; i < 50; ++i)
      REQUIRE(c.request("MADEUP" + std::to_string(i), "/todo").status == 501);
    REQUIRE(c.request("PATCH", "/todo").status == 405);
    auto m = parse_prometheus(c.get("/metrics").body);
    CHECK(m.value("eventsd_http_requests_total",
                  {{"method", "other"}, {"route", "method-not-implemented"}, {"status", "501"}})
          == 50);
    CHECK(m.value("eventsd_http_requests_total",
                  {{"method", "PATCH"}, {"route", "method-not-allowed"}, {"status", "405"}})
          == 1);
    CHECK(m.find("eventsd_http_requests_total", {{"method", "MADEUP7"}}).empty());
    // A body over the limit is refused before routing, and counted under its route.
    auto big = std::string(70000, ' ');
    REQUIRE(c.request("POST", "/todo", big, {{"Content-Type", "application/json"}}).status == 413);
    m = parse_prometheus(c.get("/metrics").body);
    CHECK(m.value("eventsd_http_requests_total",
                  {{"method", "POST"}, {"route", "/todo"}, {"status", "413"}})
          == 1);
  }
  s.restart();
  http_client c{s.port()};
  auto m = parse_prometheus(c.get("/metrics").body);
  CHECK(m.value("eventsd_log_head_position") == 3);
}

TEST_CASE("promtool rejects a malformed exposition (the format check has teeth)",
          "[http][ops][metrics]") {
  auto checked = promtool_check("# HELP eventsd_x_total x\n# TYPE eventsd_x_total counter\n"
                                "eventsd_x_total{route=\"/todo} 1\n");
  INFO(checked.output);
  CHECK(checked.exit_code() == 1);
  CHECK(checked.output.find("parsing error") != std::string::npos);
}

// Prometheus naming conventions (promtool's lint): base units (seconds, bytes),
// `_total` on counters (eventsd_projection_lag_milliseconds was renamed to
// eventsd_projection_lag_seconds in db08ba9; this guards it).
TEST_CASE("/metrics follows the Prometheus naming conventions (promtool lint clean)",
          "[http][ops][metrics]") {
  server s;
  http_client c{s.port()};
  REQUIRE(c.post_json("/todo", {{"description", "lint me"}}).status == 201);
  auto r = c.get("/metrics");
  REQUIRE(r.status == 200);
  auto checked = promtool_check(r.body);
  INFO("promtool check metrics (exit " << checked.exit_code() << "):\n" << checked.output);
  CHECK(checked.exit_code() == 0);
}

TEST_CASE("malformed requests are answered 400 each, and logged at most once a second with a "
          "count of the rest and the address of the client",
          "[http][operations]") {
  server s;
  for (int i = 0; i < 50; ++i) {
    auto raw = raw_exchange(s.port(), "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
    REQUIRE(parse_response(raw).status == 400);
  }
  size_t lines = 0;
  auto out = s.output();
  for (size_t at = out.find("eventsd: http read"); at != std::string::npos;
       at = out.find("eventsd: http read", at + 1))
    ++lines;
  INFO(out);
  CHECK(lines >= 1);
  CHECK(lines < 10); // one per second of the loop, not one per request
  auto first = out.find("eventsd: http read");
  REQUIRE(first != std::string::npos);
  auto line = out.substr(first, out.find('\n', first) - first);
  CHECK(line.rfind("eventsd: http read from 127.0.0.1:", 0) == 0);
  CHECK(line.find(": bad field") != std::string::npos);
}
