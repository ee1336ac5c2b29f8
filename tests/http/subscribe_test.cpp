// API.md §2 and §6: GET /subscribe/$all as Server-Sent Events, read by a raw
// streaming client (http_support.hpp's sse_client) from the real eventsd:
// catch-up then live under concurrent writers (every position exactly once, in
// order), Last-Event-ID over from, heartbeat comments (--http.sse-heartbeat-ms),
// a slow reader that must not slow writers, and vanished clients
// (eventsd_sse_subscribers back to 0). One server is shared by the file.
#include "http_support.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <thread>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

namespace {

/// The port of this file's server (harness's shared_server).
uint16_t port() {
  return shared_server(server_options::with_args({"--http.sse-heartbeat-ms=200"})).port();
}

http_client& client() {
  static http_client c{port()};
  return c;
}

uint64_t head() {
  return all_head(client());
}

/// Makes sure the log holds at least `n` events.
void ensure_events(uint64_t n) {
  auto h = head();
  while (h < n) {
    auto r = client().post_json("/todo", {{"description", "filler " + std::to_string(h)}});
    REQUIRE(r.status == 201);
    h = ack_of(r).position;
  }
}

std::string subscribe_target(uint64_t from) {
  return "/subscribe/$all?from=" + std::to_string(from);
}

/// Opens a subscription and checks its answer head (200, text/event-stream).
std::unique_ptr<sse_client> subscribe(const std::string& target, sse_client::options o = {}) {
  auto s = std::make_unique<sse_client>(port(), target, std::move(o));
  auto& h = s->head();
  INFO("GET " << target << " answered " << h.status << ": " << h.body);
  REQUIRE(h.status == 200);
  REQUIRE(media_type(h) == "text/event-stream");
  return s;
}

/// Reads messages until one has id `last` (or `within` passes); returns them all.
std::vector<sse_message> read_until(sse_client& s, uint64_t last,
                                    std::chrono::milliseconds within = 20000ms) {
  std::vector<sse_message> out;
  auto deadline = std::chrono::steady_clock::now() + within;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return out;
    auto m = s.next(left);
    if (!m)
      return out;
    out.push_back(*m);
    if (m->id && *m->id == std::to_string(last))
      return out;
  }
}

/// The positions that `messages` carry as `id:`; 0 for a message without an id.
std::vector<uint64_t> ids_of(const std::vector<sse_message>& messages) {
  std::vector<uint64_t> out;
  for (auto& m : messages)
    out.push_back(m.id ? std::stoull(*m.id) : 0);
  return out;
}

std::vector<uint64_t> range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (auto p = first; p <= last; ++p)
    out.push_back(p);
  return out;
}

/// Reports the first place where `got` differs from `want` (a gap, a duplicate, disorder).
std::string first_difference(const std::vector<uint64_t>& got, const std::vector<uint64_t>& want) {
  for (size_t i = 0; i < std::max(got.size(), want.size()); ++i) {
    if (i >= got.size())
      return "missing from index " + std::to_string(i) + " (position " + std::to_string(want[i])
             + ")";
    if (i >= want.size())
      return "extra at index " + std::to_string(i) + ": " + std::to_string(got[i]);
    if (got[i] != want[i])
      return "index " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want "
             + std::to_string(want[i]);
  }
  return "none";
}

/// The largest TCP send buffer the kernel autotunes to (net.ipv4.tcp_wmem max).
size_t kernel_send_buffer_max() {
  std::ifstream in{"/proc/sys/net/ipv4/tcp_wmem"};
  size_t lo = 0, def = 0, max = 4 * 1024 * 1024;
  in >> lo >> def >> max;
  return max;
}

double subscribers_metric() {
  auto r = client().get("/metrics");
  REQUIRE(r.status == 200);
  return parse_prometheus(r.body).value("eventsd_sse_subscribers");
}

} // namespace

TEST_CASE("SSE: catch-up from 1 then live while writers append: every position exactly once, "
          "in order",
          "[http][sse]") {
  ensure_events(500);
  auto before = head();

  // Writers: 4 clients appending 2000 events (creates and status changes).
  std::string writer_error;
  write_batch written;
  std::thread writers{[&] {
    try {
      written = parallel_writes(port(), 4, 500, [](http_client& c, size_t t, size_t i) {
        static thread_local std::string id;
        if (i % 3 == 0 || id.empty()) {
          auto r = c.post_json("/todo", {{"description", "live " + std::to_string(t) + "/"
                                                           + std::to_string(i)}});
          if (r.status == 201)
            id = ack_of(r).id;
          return r;
        }
        return i % 3 == 1 ? c.put("/todo/" + id + "/put-in-progress") : c.put("/todo/" + id + "/done");
      });
    } catch (const std::exception& e) {
      writer_error = e.what();
    }
  }};
  // Subscribe while the writers run: catch-up (from 1 and from the middle of
  // the catch-up range) and live only (from just past the current head).
  REQUIRE(eventually([&] { return head() > before + 100; }, 10000ms, 5ms));
  auto live_from = head() + 1;
  struct reader {
    uint64_t from;
    std::unique_ptr<sse_client> sse;
    std::vector<sse_message> got;
    std::thread thread;
  };
  std::vector<reader> readers;
  for (uint64_t from : {uint64_t{1}, before / 2, live_from})
    readers.push_back({from, subscribe(subscribe_target(from)), {}, {}});
  std::atomic<uint64_t> final_head{0};
  for (auto& r : readers)
    r.thread = std::thread{[&r, &final_head] {
      auto deadline = std::chrono::steady_clock::now() + 30s;
      while (std::chrono::steady_clock::now() < deadline) {
        auto m = r.sse->next(100ms);
        if (m) {
          r.got.push_back(*m);
          continue;
        }
        auto h = final_head.load();
        if (r.sse->ended() || (h > 0 && !r.got.empty() && r.got.back().id == std::to_string(h)))
          return;
      }
    }};
  writers.join();
  REQUIRE(writer_error.empty());
  REQUIRE(written.acks.size() == 2000);
  auto h = head();
  final_head = h;
  for (auto& r : readers)
    r.thread.join();

  auto log = read_all(client());
  REQUIRE(log.size() == h);
  for (auto& r : readers) {
    INFO("subscriber from " << r.from << " (head " << h << ")");
    auto ids = ids_of(r.got);
    auto want = range(r.from, h);
    INFO("first difference: " << first_difference(ids, want));
    CHECK(ids == want);
    // Each message: `id: <position>` and `data: <event JSON>`, the event as $all has it.
    bool all_match = true;
    for (auto& m : r.got) {
      auto e = json::parse(m.data, nullptr, false);
      auto pos = m.id ? std::stoull(*m.id) : 0;
      bool ok = m.event.empty() && !e.is_discarded() && pos >= 1 && pos <= log.size()
                && e == log[pos - 1];
      if (!ok) {
        INFO("message id " << m.id.value_or("<none>") << " data " << m.data);
        CHECK(ok);
        all_match = false;
        break;
      }
    }
    CHECK(all_match);
  }
  check_event_shape(json::parse(readers[0].got.front().data));
  check_event_shape(json::parse(readers[0].got.back().data));
}

TEST_CASE("SSE: from is inclusive; Last-Event-ID: P overrides from and resumes at P + 1",
          "[http][sse]") {
  ensure_events(20);
  auto h = head();

  SECTION("from=3 starts at 3") {
    auto s = subscribe(subscribe_target(3));
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(3, h));
    CHECK(s->head().header("Cache-Control").value_or("").find("no-cache") != std::string::npos);
  }
  SECTION("Last-Event-ID: 5 with from=1 starts at 6") {
    auto s = subscribe(subscribe_target(1), {{{"Last-Event-ID", "5"}}});
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(6, h));
  }
  SECTION("Last-Event-ID: 10 with from=15 starts at 11") {
    auto s = subscribe(subscribe_target(15), {{{"Last-Event-ID", "10"}}});
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(11, h));
  }
  SECTION("Last-Event-ID without from") {
    auto s = subscribe("/subscribe/$all", {{{"Last-Event-ID", std::to_string(h - 2)}}});
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(h - 1, h));
  }
  SECTION("Last-Event-ID: 0 starts at 1") {
    auto s = subscribe(subscribe_target(7), {{{"Last-Event-ID", "0"}}});
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(1, h));
  }
  SECTION("no from: the whole log") {
    auto s = subscribe("/subscribe/$all");
    auto got = read_until(*s, h);
    CHECK(ids_of(got) == range(1, h));
  }
  SECTION("Last-Event-ID at the head: nothing until the next write, then exactly it") {
    auto s = subscribe(subscribe_target(1), {{{"Last-Event-ID", std::to_string(h)}}});
    CHECK_FALSE(s->next(400ms));
    auto w = client().post_json("/todo", {{"description", "after the resume point"}});
    REQUIRE(w.status == 201);
    auto m = s->next(5000ms);
    REQUIRE(m);
    CHECK(m->id == std::to_string(ack_of(w).position));
    CHECK(json::parse(m->data)["stream"] == "todo-" + ack_of(w).id);
  }
  SECTION("from past the end: nothing until the log reaches it, then from there") {
    auto s = subscribe(subscribe_target(h + 3));
    CHECK_FALSE(s->next(300ms));
    std::vector<uint64_t> positions;
    for (int i = 0; i < 4; ++i) {
      auto w = client().post_json("/todo", {{"description", "filling up to from"}});
      REQUIRE(w.status == 201);
      positions.push_back(ack_of(w).position);
    }
    REQUIRE(positions.front() == h + 1);
    auto got = read_until(*s, h + 4, 5000ms);
    CHECK(ids_of(got) == range(h + 3, h + 4));
  }
}

TEST_CASE("SSE: a malformed from is a 400 problem", "[http][sse][errors]") {
  for (auto q : {"from=abc", "from=-1", "from=1.5", "from=", "from=1&from=2"}) {
    INFO("GET /subscribe/$all?" << q);
    sse_client s{port(), std::string{"/subscribe/$all?"} + q};
    check_problem(s.head(), 400);
  }
}

TEST_CASE("SSE: a from or Last-Event-ID past any position is accepted as by GET /streams/$all, "
          "and selects nothing",
          "[http][sse]") {
  auto h = client().post_json("/todo", {{"description", "before a huge from"}});
  REQUIRE(h.status == 201);
  CHECK(client().get("/streams/$all?from=100000000000000000000").status == 200);
  for (auto target : {std::string{"/subscribe/$all?from=100000000000000000000"},
                      std::string{"/subscribe/$all?from=18446744073709551615"}}) {
    INFO(target);
    auto s = subscribe(target);
    CHECK_FALSE(s->next(300ms));
  }
  auto s = subscribe("/subscribe/$all", {{{"Last-Event-ID", "99999999999999999999999"}}});
  CHECK_FALSE(s->next(300ms));
}

TEST_CASE("SSE: heartbeats are comment lines every --http.sse-heartbeat-ms", "[http][sse]") {
  auto s = subscribe(subscribe_target(head() + 1));
  auto started = std::chrono::steady_clock::now();
  s->pump(1300ms);
  CHECK_FALSE(s->ended());
  CHECK_FALSE(s->next(0ms)); // no event, only comments
  // Besides any greeting comment, one heartbeat per 200 ms (allow scheduling slack).
  size_t count = s->comments().size();
  INFO("comments in " << std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - started)
                           .count()
                      << " ms: " << count);
  CHECK(count >= 4);
  CHECK(count <= 12);
  // Heartbeats keep coming between events, and events still arrive.
  auto w = client().post_json("/todo", {{"description", "between heartbeats"}});
  REQUIRE(w.status == 201);
  auto m = s->next(3000ms);
  REQUIRE(m);
  CHECK(m->id == std::to_string(ack_of(w).position));
  auto after = s->comments().size();
  s->pump(700ms);
  CHECK(s->comments().size() >= after + 2);
}

TEST_CASE("SSE: a slow reader blocks neither writers nor health checks, and loses nothing",
          "[http][sse][slow]") {
  // Events of ~1.2 KB (255 code points of 4 UTF-8 bytes each): 5000 of them
  // exceed what the kernel buffers between the server and a stuck client, so
  // the server really has to hold back.
  const std::string pad = "\xF0\x9F\x90\xA2"; // U+1F422 TURTLE
  ensure_events(1);
  auto h = head();

  // A reader that reads nothing, with a small receive buffer, and a normal one.
  sse_client::options small;
  small.receive_buffer = 4096;
  auto slow = subscribe(subscribe_target(h + 1), small);
  auto fast = subscribe(subscribe_target(h + 1));
  std::vector<sse_message> fast_got;
  std::atomic<uint64_t> last{0};
  std::thread fast_reader{[&] {
    auto deadline = std::chrono::steady_clock::now() + 40s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto m = fast->next(100ms);
      if (m)
        fast_got.push_back(*m);
      else if (fast->ended() || (last > 0 && !fast_got.empty()
                                 && fast_got.back().id == std::to_string(last.load())))
        return;
    }
  }};
  // Health stays good while the slow reader's buffers are full.
  std::atomic<bool> writing{true};
  std::vector<unsigned> health_status;
  std::thread prober{[&] {
    http_client c{port()};
    while (writing) {
      health_status.push_back(c.get("/healthz").status);
      std::this_thread::sleep_for(20ms);
    }
  }};
  auto loaded = create_todos(port(), 4, 1250, "while a reader sleeps", 255, pad);
  writing = false;
  prober.join();
  REQUIRE(loaded.acks.size() == 5000);
  auto end = head();
  REQUIRE(end == h + 5000);
  last = end;
  fast_reader.join();

  // How much readers that never read slow the writes is scripts/bench-sse's
  // to measure; here: nothing waits for them (every write and probe above was
  // answered while the slow reader read nothing).
  INFO("write latency ms with a slow reader: p50 " << quantile(loaded.latency_ms, 0.5) << " p99 "
       << quantile(loaded.latency_ms, 0.99) << " max " << quantile(loaded.latency_ms, 1.0));
  INFO("healthz probes: " << health_status.size());
  CHECK_FALSE(health_status.empty());
  CHECK(std::all_of(health_status.begin(), health_status.end(), [](unsigned s) { return s == 200; }));

  // The normal reader got everything live.
  size_t bytes = 0;
  for (auto& m : fast_got)
    bytes += m.data.size();
  INFO("the 5000 events are " << bytes << " bytes of SSE data; the kernel may buffer up to "
       << kernel_send_buffer_max() << " bytes per connection");
  CHECK(bytes > kernel_send_buffer_max() + 256 * 1024);
  auto fast_ids = ids_of(fast_got);
  INFO("fast reader first difference: " << first_difference(fast_ids, range(h + 1, end)));
  CHECK(fast_ids == range(h + 1, end));

  // The slow reader now reads: every event, in order, nothing lost (a server
  // may drop a client that stays stuck; then it resumes with Last-Event-ID).
  CHECK_FALSE(slow->ended());
  auto got = read_until(*slow, end, 30000ms);
  auto ids = ids_of(got);
  if (ids.empty() || ids.back() != end) {
    REQUIRE(slow->ended());
    auto resume_after = ids.empty() ? h : ids.back();
    CHECK(ids == range(h + 1, resume_after));
    auto again = subscribe(subscribe_target(1), {{{"Last-Event-ID", std::to_string(resume_after)}}});
    auto rest = ids_of(read_until(*again, end, 30000ms));
    ids.insert(ids.end(), rest.begin(), rest.end());
  }
  INFO("slow reader first difference: " << first_difference(ids, range(h + 1, end)));
  CHECK(ids == range(h + 1, end));

  // And the server is still healthy.
  CHECK(client().get("/healthz").status == 200);
  auto w = client().post_json("/todo", {{"description", "after the slow reader"}});
  CHECK(w.status == 201);
}

TEST_CASE("SSE: vanished clients are noticed (eventsd_sse_subscribers drops back to 0)",
          "[http][sse][vanish]") {
  // Earlier tests' subscribers are gone.
  CHECK(eventually([] { return subscribers_metric() == 0; }, 5000ms, 50ms));

  auto h = head();
  auto a = subscribe(subscribe_target(h + 1));
  auto b = subscribe(subscribe_target(h + 1));
  auto c = subscribe(subscribe_target(h + 1));
  sse_client::options small;
  small.receive_buffer = 4096;
  auto stuck = subscribe(subscribe_target(1), small); // catch-up fills its buffers
  CHECK(eventually([] { return subscribers_metric() == 4; }, 5000ms, 20ms));

  // Closed normally while idle (nothing to send it).
  a->close();
  CHECK(eventually([] { return subscribers_metric() == 3; }, 5000ms, 20ms));
  // Reset (a crashed client) while idle.
  b->reset();
  CHECK(eventually([] { return subscribers_metric() == 2; }, 5000ms, 20ms));
  // Gone while the server is blocked writing to it.
  stuck->reset();
  CHECK(eventually([] { return subscribers_metric() == 1; }, 5000ms, 20ms));
  // Closed, then events are written.
  c->close();
  for (int i = 0; i < 5; ++i)
    REQUIRE(client().post_json("/todo", {{"description", "nobody listens"}}).status == 201);
  CHECK(eventually([] { return subscribers_metric() == 0; }, 5000ms, 20ms));

  // A new subscriber still works.
  auto d = subscribe(subscribe_target(head()));
  auto m = d->next(5000ms);
  REQUIRE(m);
  CHECK(m->id == std::to_string(head()));
  CHECK(eventually([] { return subscribers_metric() == 1; }, 5000ms, 20ms));
}

TEST_CASE("SSE: a live subscriber that falls more than --http.sse-max-lag behind gets a final "
          "comment and is disconnected; it resumes with Last-Event-ID and loses nothing",
          "[http][sse][slow]") {
  server s{server_options::with_args({"--http.sse-max-lag=2000"})};
  http_client c{s.port()};
  const std::string pad = "\xF0\x9F\x90\xA2"; // 4 UTF-8 bytes: events of ~1.2 KB
  REQUIRE(c.post_json("/todo", {{"description", "first"}}).status == 201);
  auto h = all_head(c);

  auto open = [&](uint64_t from, sse_client::options o) {
    auto sub = std::make_unique<sse_client>(s.port(), "/subscribe/$all?from=" + std::to_string(from),
                                            std::move(o));
    REQUIRE(sub->head().status == 200);
    return sub;
  };
  // A subscriber that has caught up and then reads nothing (small receive
  // buffer), and one that keeps up under the same limit.
  sse_client::options small;
  small.receive_buffer = 4096;
  auto stuck = open(h + 1, small);
  auto fast = open(h + 1, {});
  std::this_thread::sleep_for(200ms); // both have read the (empty) head page: live

  std::vector<sse_message> fast_got;
  std::atomic<uint64_t> last{0};
  std::thread fast_reader{[&] {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto m = fast->next(100ms))
        fast_got.push_back(*m);
      else if (fast->ended() || (last > 0 && !fast_got.empty()
                                 && fast_got.back().id == std::to_string(last.load())))
        return;
    }
  }};
  // Events of ~1.2 KB, 6000 or more: well past what the kernel buffers for
  // the stuck client, so the server really falls behind with it.
  const size_t per_thread = std::max<size_t>(1500, (kernel_send_buffer_max() + (2 << 20)) / 1200 / 4);
  auto loaded = create_todos(s.port(), 4, per_thread, "past a stuck reader", 255, pad);
  REQUIRE(loaded.acks.size() == 4 * per_thread);
  auto end = all_head(c);
  REQUIRE(end == h + 4 * per_thread);
  last = end;
  fast_reader.join();
  // The keeping-up reader got every event and was never cut off.
  CHECK_FALSE(fast->ended());
  auto fast_ids = ids_of(fast_got);
  INFO("fast reader first difference: " << first_difference(fast_ids, range(h + 1, end)));
  CHECK(fast_ids == range(h + 1, end));

  // The stuck reader now reads: a gap-free prefix, then the final comment, then the end.
  std::vector<sse_message> got;
  while (auto m = stuck->next(10000ms))
    got.push_back(*m);
  REQUIRE(stuck->ended());
  auto ids = ids_of(got);
  REQUIRE_FALSE(ids.empty());
  INFO("the stuck reader got " << ids.size() << " events before it was cut off");
  CHECK(ids.back() < end);
  CHECK(ids == range(h + 1, ids.back()));
  REQUIRE_FALSE(stuck->comments().empty());
  INFO("last comment: " << stuck->comments().back());
  CHECK(stuck->comments().back().find("too slow") != std::string::npos);
  CHECK(stuck->comments().back().find("Last-Event-ID") != std::string::npos);
  auto metrics = parse_prometheus(c.get("/metrics").body);
  CHECK(metrics.value("eventsd_sse_slow_disconnects_total") == 1);

  // Resuming where it stopped delivers exactly the rest.
  auto again = std::make_unique<sse_client>(
    s.port(), "/subscribe/$all",
    sse_client::options{{{"Last-Event-ID", std::to_string(ids.back())}}});
  REQUIRE(again->head().status == 200);
  auto rest = ids_of(read_until(*again, end, 20000ms));
  CHECK(rest == range(ids.back() + 1, end));
  CHECK(c.get("/healthz").status == 200);
}

TEST_CASE("SSE: a subscriber that takes a large backlog slowly but steadily is not dropped at "
          "--http.read-timeout-ms; one that takes nothing is",
          "[http][sse][slow]") {
  server s{server_options::with_args({"--http.read-timeout-ms=5000"})};
  http_client c{s.port()};
  // A backlog of ~4 MB, larger than the kernel lets a connection buffer at
  // first: the server's writes wait for the client's reading (the kernel lets
  // one go on only once a good part of a send buffer grown large is free).
  REQUIRE(create_todos(s.port(), 4, 3000, "backlog").acks.size() == 12000);
  auto end = all_head(c);

  sse_client::options small;
  small.receive_buffer = 2048;
  sse_client steady{s.port(), "/subscribe/$all?from=1", small};
  sse_client idle{s.port(), "/subscribe/$all?from=1", small};
  REQUIRE(steady.head().status == 200);
  REQUIRE(idle.head().status == 200);
  // About 150 KB/s for 22 s (more than four read timeouts), never pausing
  // for long: never dropped (a black-box test saw such a reader dropped
  // after 17 s, its stream cut inside an event).
  std::vector<sse_message> got;
  auto until = std::chrono::steady_clock::now() + 22s;
  while (std::chrono::steady_clock::now() < until && !steady.ended()) {
    if (auto m = steady.next(1000ms))
      got.push_back(*m);
    std::this_thread::sleep_for(2ms);
  }
  INFO("the steady reader got " << got.size() << " of " << end << " events");
  CHECK_FALSE(steady.ended());
  REQUIRE_FALSE(got.empty());
  auto ids = ids_of(got);
  CHECK(ids == range(1, ids.back()));
  // The one that read nothing all that time was dropped (it resumes with
  // Last-Event-ID).
  while (idle.next(6000ms)) {
  }
  CHECK(idle.ended());
}

TEST_CASE("SSE: a subscriber that reads nothing is dropped after --http.read-timeout-ms also "
          "when the server is idle (its heartbeats would still fit in the kernel's buffers)",
          "[http][sse][slow]") {
  server s{server_options::with_args({"--http.read-timeout-ms=1500",
                                      "--http.sse-heartbeat-ms=200"})};
  http_client c{s.port()};
  REQUIRE(create_todos(s.port(), 2, 30, "enough to fill a small window", 200).acks.size() == 60);
  sse_client::options small;
  small.receive_buffer = 2048;
  sse_client idle{s.port(), "/subscribe/$all?from=1", small};
  REQUIRE(idle.head().status == 200);
  auto subscribers = [&] {
    return parse_prometheus(c.get("/metrics").body).value("eventsd_sse_subscribers");
  };
  REQUIRE(eventually([&] { return subscribers() == 1; }, 2000ms, 20ms));
  // Nothing more is written: only heartbeats, which the server's send
  // buffer would take for hours. The client has taken nothing since its
  // window filled, so it goes within about the read timeout.
  CHECK(eventually([&] { return subscribers() == 0; }, 6000ms, 100ms));
  CHECK(c.get("/healthz").status == 200);
}

TEST_CASE("SSE: past --http.sse-max-subscribers one more subscriber is a 503 with Retry-After; "
          "once one leaves, a new one is served",
          "[http][sse]") {
  server s{server_options::with_args({"--http.sse-max-subscribers=2"})};
  auto first = std::make_unique<sse_client>(s.port(), "/subscribe/$all");
  REQUIRE(first->head().status == 200);
  sse_client second{s.port(), "/subscribe/$all"};
  REQUIRE(second.head().status == 200);
  sse_client third{s.port(), "/subscribe/$all"};
  check_problem(third.head(), 503);
  CHECK(third.head().header("Retry-After") == "5");
  CHECK(third.head().body.find("--http.sse-max-subscribers") != std::string::npos);

  first->close();
  first.reset();
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) { // the server notices the close asynchronously
    sse_client next{s.port(), "/subscribe/$all"};
    served = next.head().status == 200;
    if (!served)
      std::this_thread::sleep_for(100ms);
  }
  CHECK(served);
}

TEST_CASE("SSE: subscribers arriving all at once are admitted up to --http.sse-max-subscribers "
          "exactly",
          "[http][sse]") {
  server s{server_options::with_args({"--http.sse-max-subscribers=3", "--http.threads=2"})};
  constexpr int clients = 16;
  std::vector<std::unique_ptr<sse_client>> opened(clients);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&, i] {
      while (!go)
        std::this_thread::yield();
      opened[i] = std::make_unique<sse_client>(s.port(), "/subscribe/$all");
    });
  go = true;
  for (auto& t : threads)
    t.join();
  int served = 0;
  for (auto& c : opened) {
    INFO("answer: " << c->head().status << " " << c->head().body);
    CHECK((c->head().status == 200 || c->head().status == 503));
    served += c->head().status == 200;
  }
  CHECK(served == 3);
}

TEST_CASE("SSE: subscribers catching up at once take turns, each gets every event in order, and "
          "ones that stall or vanish while they wait hold nobody up",
          "[http][sse][catch-up]") {
  // Several pages (500 events each) for every subscriber to catch up on.
  if (head() < 2600)
    REQUIRE(create_todos(port(), 4, 650, "catch-up filler").acks.size() == 2600);
  auto h = head();
  auto gauge = [](const char* name) { return metric(client(), name); };
  const auto waits_before = gauge("eventsd_sse_catch_up_waits_total");
  // Subscribers that take nothing: each catch-up fills their buffers and
  // then waits on the socket, not on the others.
  sse_client::options small;
  small.receive_buffer = 4096;
  std::vector<std::unique_ptr<sse_client>> stuck;
  for (int i = 0; i < 10; ++i)
    stuck.push_back(subscribe(subscribe_target(1), small));
  std::vector<std::unique_ptr<sse_client>> readers;
  for (int i = 0; i < 6; ++i)
    readers.push_back(subscribe(subscribe_target(1)));
  // Half the stuck ones vanish while the readers catch up (some waiting for
  // a turn, some holding one or with a page in flight).
  for (int i = 0; i < 5; ++i)
    stuck[i]->reset();
  std::vector<std::vector<uint64_t>> got(readers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < readers.size(); ++i)
    threads.emplace_back([&, i] { got[i] = ids_of(read_until(*readers[i], h, 60000ms)); });
  for (auto& t : threads)
    t.join();
  // They took turns: some waited for one.
  CHECK(gauge("eventsd_sse_catch_up_waits_total") > waits_before);
  for (size_t i = 0; i < readers.size(); ++i) {
    INFO("reader " << i << " first difference: " << first_difference(got[i], range(1, h)));
    CHECK(got[i] == range(1, h));
  }
  // Every slot came back: with the rest gone too, a new subscriber from the
  // start still catches up, and one more write reaches it live.
  for (int i = 5; i < 10; ++i)
    stuck[i]->reset();
  readers.clear();
  auto late = subscribe(subscribe_target(1));
  auto caught = ids_of(read_until(*late, h, 30000ms));
  INFO("late reader first difference: " << first_difference(caught, range(1, h)));
  CHECK(caught == range(1, h));
  auto w = client().post_json("/todo", {{"description", "after the catch-up"}});
  REQUIRE(w.status == 201);
  auto live = late->next(5000ms);
  REQUIRE(live);
  CHECK(live->id == std::to_string(ack_of(w).position));
  // Nobody holds a turn or waits for one any more.
  CHECK(eventually([&] { return gauge("eventsd_sse_catching_up") == 0; }, 5000ms, 20ms));
  CHECK(gauge("eventsd_sse_catch_up_waiting") == 0);
}

TEST_CASE("SSE: --http.sse-catch-up-slots sets how many subscribers catch up at once: with a "
          "slot for each, nobody waits for a turn",
          "[http][sse][catch-up]") {
  server s{server_options::with_args({"--http.sse-catch-up-slots=64"})};
  REQUIRE(create_todos(s.port(), 4, 400, "catch-up filler").acks.size() == 1600);
  http_client c{s.port()};
  std::vector<std::unique_ptr<sse_client>> readers;
  for (int i = 0; i < 8; ++i)
    readers.push_back(std::make_unique<sse_client>(s.port(), "/subscribe/$all?from=1"));
  std::vector<std::vector<uint64_t>> got(readers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < readers.size(); ++i)
    threads.emplace_back([&, i] { got[i] = ids_of(read_until(*readers[i], 1600, 60000ms)); });
  for (auto& t : threads)
    t.join();
  for (size_t i = 0; i < readers.size(); ++i) {
    INFO("reader " << i << " first difference: " << first_difference(got[i], range(1, 1600)));
    CHECK(got[i] == range(1, 1600));
  }
  CHECK(metric(c, "eventsd_sse_catch_up_waits_total") == 0);
  CHECK(metric(c, "eventsd_sse_catch_up_waiting") == 0);
}
