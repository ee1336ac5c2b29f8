// End-to-end tests of durability across restarts and crashes: the real eventsd
// is stopped (SIGTERM) or killed (SIGKILL, under load) and started again on the
// same storage directory and database.
#include "e2e/harness.hpp"
#include "e2e/log_fold.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sys/wait.h>
#include <thread>

using namespace eventsd::e2e;
using namespace std::chrono_literals;

namespace {

/// One acknowledged write: what the server promised is durable.
struct acked_write {
  write_ack ack;
  std::string type;
};

} // namespace

TEST_CASE("a restart on the same storage and database keeps history, versions and positions, "
          "and new writes continue the positions",
          "[e2e][recovery]") {
  server s;
  std::vector<json> log_before;
  json history_a, history_b;
  write_ack a, b, keyed;
  std::string key = "restart-" + random_uuid();
  {
    http_client c{s.port()};
    a = ack_of(c.post_json("/todo", {{"description", "survives restarts"}}));
    REQUIRE(c.put_json("/todo/change-description", {{"id", a.id}, {"description", "renamed"}})
              .status == 200);
    REQUIRE(c.put("/todo/" + a.id + "/put-in-progress").status == 200);
    b = ack_of(c.post_json("/todo", {{"description", "second survivor"}}));
    REQUIRE(c.put("/todo/" + b.id + "/done").status == 200);
    auto k = c.post_json("/todo", {{"description", "keyed"}}, {{"Idempotency-Key", key}});
    REQUIRE(k.status == 201);
    keyed = ack_of(k);
    log_before = read_all(c);
    REQUIRE(log_before.size() == 6);
    history_a = c.get("/todo/" + a.id + "/history").json_body();
    history_b = c.get("/todo/" + b.id + "/history").json_body();
  }

  int status = s.stop();
  INFO("output so far:\n" << s.output());
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  s.start();

  http_client c{s.port()};
  CHECK(read_all(c) == log_before);
  CHECK(c.get("/todo/" + a.id + "/history").json_body() == history_a);
  CHECK(c.get("/todo/" + b.id + "/history").json_body() == history_b);

  // The idempotency record survived too.
  auto replay = c.post_json("/todo", {{"description", "keyed"}}, {{"Idempotency-Key", key}});
  CHECK(replay.status == 201);
  auto r = ack_of(replay);
  CHECK(r.id == keyed.id);
  CHECK(r.position == keyed.position);
  CHECK(all_head(c) == 6);

  auto next = c.put("/todo/" + a.id + "/done");
  REQUIRE(next.status == 200);
  auto n = ack_of(next);
  CHECK(n.version == 4);
  CHECK(n.position == 7);
  auto created = ack_of(c.post_json("/todo", {{"description", "after the restart"}}));
  CHECK(created.position == 8);

  auto ra = c.get("/todo/" + a.id + "?minPosition=8");
  REQUIRE(ra.status == 200);
  CHECK(ra.json_body() == json{{"id", a.id}, {"description", "renamed"}, {"status", "Done"},
                               {"version", 4}});
  auto listed = list_read_model(c, 8);
  CHECK(listed.size() == 4);
}

TEST_CASE("SIGKILL under load loses no acknowledged write, leaves no gap in $all, and the "
          "read model converges",
          "[e2e][recovery][crash]") {
  server s;
  std::atomic<bool> stop{false};
  std::mutex mtx;
  std::vector<acked_write> acked;
  std::atomic<int> unexpected{0};
  std::vector<std::string> unexpected_answers;

  auto worker = [&](int t) {
    std::mt19937 gen{static_cast<unsigned>(t * 7919 + 1)};
    std::vector<write_ack> mine;
    std::vector<acked_write> local;
    try {
      http_client c{s.port()};
      while (!stop) {
        response r;
        std::string type;
        if (mine.empty() || gen() % 3 == 0) {
          type = "created";
          r = c.post_json("/todo", {{"description", "load " + std::to_string(t) + "/"
                                                      + std::to_string(local.size())}});
        } else {
          auto& target = mine[gen() % mine.size()];
          switch (gen() % 3) {
            case 0:
              type = "description-changed";
              r = c.put_json("/todo/change-description",
                             {{"id", target.id},
                              {"description", "changed " + std::to_string(local.size())}});
              break;
            case 1:
              type = "status-changed-to-in-progress";
              r = c.put("/todo/" + target.id + "/put-in-progress");
              break;
            default:
              type = "status-changed-to-done";
              r = c.put("/todo/" + target.id + "/done");
          }
        }
        if (r.status != 200 && r.status != 201) {
          std::lock_guard lock{mtx};
          ++unexpected;
          unexpected_answers.push_back(std::to_string(r.status) + " " + r.body);
          continue;
        }
        auto ack = ack_of(r);
        if (type == "created")
          mine.push_back(ack);
        local.push_back({ack, type});
      }
    } catch (const std::exception&) {
      // The server was killed: the request in flight is not acknowledged.
    }
    std::lock_guard lock{mtx};
    acked.insert(acked.end(), local.begin(), local.end());
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back(worker, t);
  sleep_for(1500ms);
  s.kill(); // mid-load: the workers are still sending
  sleep_for(100ms);
  stop = true;
  for (auto& th : threads)
    th.join();

  INFO("unexpected answers: " << (unexpected_answers.empty() ? "" : unexpected_answers.front()));
  CHECK(unexpected == 0);
  REQUIRE(acked.size() > 50);

  s.start();
  http_client c{s.port()};
  auto events = read_all(c);
  REQUIRE(events.size() >= acked.size());

  // $all is 1..head without gaps.
  for (size_t i = 0; i < events.size(); ++i) {
    INFO("event " << events[i].dump());
    REQUIRE(events[i]["position"] == i + 1);
  }
  // Every acknowledged write is where its answer said.
  size_t missing = 0;
  for (auto& w : acked) {
    REQUIRE(w.ack.position >= 1);
    if (w.ack.position > events.size()) {
      ++missing;
      continue;
    }
    auto& e = events[w.ack.position - 1];
    INFO("acked " << w.ack.id << " v" << w.ack.version << " @" << w.ack.position << " " << w.type
                  << "; log has " << e.dump());
    CHECK(e["stream"] == "todo-" + w.ack.id);
    CHECK(e["version"] == w.ack.version);
    CHECK(e["type"] == w.type);
  }
  CHECK(missing == 0);
  // Each stream's versions are 1..n in position order.
  std::map<std::string, uint64_t> versions;
  for (auto& e : events) {
    auto& v = versions[e["stream"].get<std::string>()];
    CHECK(e["version"] == v + 1);
    v = e["version"].get<uint64_t>();
  }

  // The read model converges to the fold of the log (which the load never undoes).
  for (auto& e : events)
    REQUIRE(e["type"] != "undo-to-some-history-state");
  auto expected = fold(events);
  auto listed = list_read_model(c, events.size());
  CHECK(listed.size() == expected.size());
  size_t mismatches = 0;
  for (auto& [id, t] : expected) {
    auto i = listed.find(id);
    if (i == listed.end() || i->second != t) {
      if (++mismatches <= 5) {
        INFO("folded " << t.dump());
        CHECK(i != listed.end());
        if (i != listed.end())
          CHECK(i->second == t);
      }
    }
  }
  CHECK(mismatches == 0);

  // And the server goes on writing after the crash.
  auto next = c.post_json("/todo", {{"description", "after the crash"}});
  REQUIRE(next.status == 201);
  CHECK(ack_of(next).position == events.size() + 1);
}

TEST_CASE("aggregates evicted (one live at most), passivated when idle and recovered (with "
          "snapshots every two events) keep versions, history and undo",
          "[e2e][recovery][actors]") {
  server s{server_options::with_args(
    {"--actors.max-live=1", "--actors.snapshot-every=2", "--actors.idle-timeout=1"})};
  http_client c{s.port()};
  // Three todos written in turn: with one live actor each write recovers its todo.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i)
    ids.push_back(ack_of(c.post_json("/todo", {{"description", "evicted " + std::to_string(i)}})).id);
  auto activations_before = metric(c, "eventsd_aggregate_activations_total");
  for (int round = 0; round < 6; ++round)
    for (size_t i = 0; i < ids.size(); ++i) {
      auto r = round % 2 == 0
                 ? c.put_json("/todo/change-description",
                              {{"id", ids[i]}, {"description", "round " + std::to_string(round)}})
                 : c.put("/todo/" + ids[i] + (round % 4 == 1 ? "/put-in-progress" : "/done"));
      INFO("round " << round << " todo " << i << ": " << r.status << " " << r.body);
      REQUIRE(r.status == 200);
      CHECK(ack_of(r).version == static_cast<uint64_t>(round) + 2);
      // (The evicted actor leaves the gauge a moment after the new one joins.)
      CHECK(eventually([&] { return metric(c, "eventsd_live_aggregates") <= 1; }, 2000ms, 10ms));
    }
  // Each write found its todo evicted by the write before (another todo's).
  CHECK(metric(c, "eventsd_aggregate_activations_total") - activations_before >= 18);
  auto first_event = c.get("/todo/" + ids[0] + "/history").json_body()["items"][0]["id"];
  auto u = c.put("/todo/" + ids[0] + "/undo-to/" + first_event.get<std::string>());
  REQUIRE(u.status == 200);
  CHECK(ack_of(u).version == 8);

  auto passivations_before = metric(c, "eventsd_aggregate_passivations_total");
  CHECK(eventually([&] { return metric(c, "eventsd_live_aggregates") == 0; }, 10000ms, 100ms));
  CHECK(metric(c, "eventsd_aggregate_passivations_total") > passivations_before);
  auto after_idle = c.put("/todo/" + ids[1] + "/done");
  REQUIRE(after_idle.status == 200);
  CHECK(ack_of(after_idle).version == 8);

  s.restart(); // recovery from stored snapshots after a restart
  http_client c2{s.port()};
  auto h = c2.get("/todo/" + ids[0] + "/history").json_body()["items"];
  REQUIRE(h.size() == 8);
  for (size_t v = 0; v < h.size(); ++v)
    CHECK(h[v]["version"] == v + 1);
  CHECK(h.back()["snapshot"] == json{{"id", ids[0]}, {"description", "evicted 0"},
                                     {"status", "Created"}, {"version", 8}});
  auto next = c2.put("/todo/" + ids[0] + "/put-in-progress");
  REQUIRE(next.status == 200);
  CHECK(ack_of(next).version == 9);
  auto r2 = c2.put("/todo/" + ids[2] + "/done");
  REQUIRE(r2.status == 200);
  CHECK(ack_of(r2).version == 8);
}

TEST_CASE("SIGTERM (or SIGHUP) under load answers every request it has read: each event in the "
          "log was answered 2xx, each 2xx is in the log, and the process exits 0, also when a "
          "second SIGTERM follows at once",
          "[e2e][recovery][shutdown]") {
  auto [signal, sigterms] = GENERATE(table<int, int>({{SIGTERM, 1}, {SIGTERM, 2}, {SIGHUP, 1}}));
  INFO(sigterms << " × signal " << signal);
  server s;
  std::mutex mtx;
  std::set<std::string> answered;
  std::vector<std::string> odd_answers;
  auto worker = [&](int t) {
    try {
      http_client c{s.port()};
      for (int i = 0;; ++i) {
        auto description = "term " + std::to_string(t) + "/" + std::to_string(i);
        auto r = c.post_json("/todo", {{"description", description}});
        std::lock_guard lock{mtx};
        if (r.status == 201)
          answered.insert(description);
        else
          odd_answers.push_back(std::to_string(r.status) + " " + r.body);
        if (r.header("Connection").value_or("") == "close")
          return; // the server is draining: this connection is done
      }
    } catch (const std::exception&) {
      // Refused or closed before a request was sent: nothing to answer.
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t)
    threads.emplace_back(worker, t);
  // Under way: at least a second, and more than 100 answers (a slow machine
  // takes longer to get there).
  sleep_for(1000ms);
  for (auto until = std::chrono::steady_clock::now() + 20s;
       std::chrono::steady_clock::now() < until; sleep_for(50ms)) {
    std::lock_guard lock{mtx};
    if (answered.size() > 100)
      break;
  }
  auto status = s.stop(sigterms, 5s, signal); // while the workers are still sending
  for (auto& t : threads)
    t.join();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  if (sigterms == 2)
    CHECK(s.output().find("already shutting down") != std::string::npos);
  INFO("odd answers: " << odd_answers.size() << (odd_answers.empty() ? "" : ", first " + odd_answers.front()));
  CHECK(odd_answers.empty());
  REQUIRE(answered.size() > 100);

  s.start();
  http_client c{s.port()};
  std::set<std::string> logged;
  for (auto& e : read_all(c))
    logged.insert(e["data"]["description"].get<std::string>());
  std::vector<std::string> unanswered;
  std::set_difference(logged.begin(), logged.end(), answered.begin(), answered.end(),
                      std::back_inserter(unanswered));
  std::vector<std::string> lost;
  std::set_difference(answered.begin(), answered.end(), logged.begin(), logged.end(),
                      std::back_inserter(lost));
  INFO(answered.size() << " answered, " << logged.size() << " in the log; appended without an "
                       << "answer: " << unanswered.size() << ", answered but lost: " << lost.size());
  CHECK(unanswered.empty());
  CHECK(lost.empty());
}

TEST_CASE("a stop signal 2 s or more after the first ends a drain that is still waiting at "
          "once (exit 128 + signal); one sooner is ignored",
          "[e2e][recovery][shutdown]") {
  // The drain waits for a read that PostgreSQL, hung, does not answer (no
  // connect_timeout: a reader that has to connect waits too).
  server_behind_proxy behind{
    {"--http.drain-timeout-ms=20000", "--postgres.query-timeout-ms=30000"}, ""};
  auto& s = behind.srv;
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "read while PostgreSQL hangs"}}));
  REQUIRE(c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)).status == 200);
  behind.proxy.stall();
  std::jthread reader([&] {
    try {
      http_client{s.port()}.get("/todo/" + a.id);
    } catch (const std::exception&) { // cut by the exit, as expected
    }
  });
  sleep_for(300ms); // the read waits in a read-model reader
  s.signal(SIGTERM);
  REQUIRE(eventually([&] { return s.output().find("eventsd: shutting down") != std::string::npos; },
                     5000ms, 5ms));
  sleep_for(100ms);
  s.signal(SIGINT); // a double Ctrl-C: ignored
  REQUIRE(eventually([&] { return s.output().find("already shutting down") != std::string::npos; },
                     5000ms, 5ms));
  CHECK_FALSE(s.wait_exit(2500ms)); // still draining
  auto t0 = std::chrono::steady_clock::now();
  s.signal(SIGTERM);
  auto status = s.wait_exit(3000ms);
  auto took = std::chrono::steady_clock::now() - t0;
  INFO(s.output());
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 128 + SIGTERM);
  CHECK(s.output().find("eventsd: signal 15 again: exiting now") != std::string::npos);
  CHECK(took < 2s); // not at the drain's end
  behind.proxy.restore();
}

TEST_CASE("a request still unanswered at the drain deadline (a long minPosition wait) gets a "
          "503 saying the server is stopping, not a cut connection",
          "[e2e][recovery][shutdown]") {
  server s{server_options::with_args({"--http.drain-timeout-ms=1000"})};
  response parked;
  std::thread reader([&] {
    http_client c{s.port()};
    parked = c.get("/todo?minPosition=999999999&waitMs=30000");
  });
  sleep_for(300ms); // the read is parked in the projection
  auto t0 = std::chrono::steady_clock::now();
  auto status = s.stop();
  auto took = std::chrono::steady_clock::now() - t0;
  reader.join();
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  INFO("answer: " << parked.status << " " << parked.body);
  CHECK(parked.status == 503);
  CHECK(parked.header("Retry-After"));
  CHECK(parked.header("Connection").value_or("") == "close");
  CHECK(parked.body.find("the server is stopping") != std::string::npos);
  CHECK(took < 4s);
}
