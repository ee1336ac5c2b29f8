// End-to-end tests of rebuilding the Todo read model (issue 4.5), against the
// real eventsd: online (`POST /admin/projections/todos/rebuild`, reads keep
// answering from the old table, progress in `GET /admin/projections`) and
// offline (`eventsd --rebuild=todos` on a stopped server's store).
#include "e2e/harness.hpp"
#include "e2e/log_fold.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <libpq-fe.h>
#include <sys/wait.h>

using namespace eventsd::e2e;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;

/// Reads from another thread until stopped: GET /todo/{id} must keep answering
/// `expected` (200) and GET /todo a full first page.
class background_reader {
public:
  background_reader(uint16_t port, std::string id, json expected)
      : thread_([this, port, id = std::move(id), expected = std::move(expected)] {
          try {
            http_client c{port};
            while (!stop_) {
              auto one = c.get("/todo/" + id);
              auto list = c.get("/todo?limit=100");
              std::lock_guard lock{mtx_};
              ++reads_;
              if (one.status != 200 || one.json_body() != expected) {
                if (bad_.size() < 5)
                  bad_.push_back("GET /todo/" + id + ": " + std::to_string(one.status) + " "
                                 + one.body.substr(0, 200));
                ++failures_;
              }
              if (list.status != 200 || list.json_body().at("items").size() != 100) {
                if (bad_.size() < 5)
                  bad_.push_back("GET /todo: " + std::to_string(list.status) + " "
                                 + list.body.substr(0, 200));
                ++failures_;
              }
            }
          } catch (const std::exception& e) {
            std::lock_guard lock{mtx_};
            bad_.push_back(std::string{"reader error: "} + e.what());
            ++failures_;
          }
        }) {}

  ~background_reader() { finish(); }

  void finish() {
    stop_ = true;
    if (thread_.joinable())
      thread_.join();
  }
  size_t reads() const { return reads_.load(); }
  size_t failures() const { return failures_; }
  std::string first_failure() const { return bad_.empty() ? "" : bad_.front(); }

private:
  std::atomic<bool> stop_{false};
  std::mutex mtx_;
  std::atomic<size_t> reads_{0};
  size_t failures_ = 0;
  std::vector<std::string> bad_;
  std::thread thread_;
};

/// Watches GET /admin/projections until `completed` reaches `target`; records
/// what it saw of the rebuild.
struct rebuild_watch {
  size_t polls = 0;
  size_t active_seen = 0;
  std::vector<uint64_t> positions; // rebuild.position while active
  bool monotonic = true;
  bool within_head = true;
  json last;

  /// `between` runs after each poll (e.g. a write while the rebuild runs).
  bool until_completed(http_client& c, uint64_t target, std::chrono::milliseconds within,
                       const std::function<void()>& between = {}) {
    return eventually(
      [&] {
        last = projection_status(c);
        if (between)
          between();
        ++polls;
        auto& rb = last.at("rebuild");
        if (rb.at("active").get<bool>()) {
          ++active_seen;
          auto p = rb.at("position").get<uint64_t>();
          if (!positions.empty() && p < positions.back())
            monotonic = false;
          if (p > rb.at("head").get<uint64_t>())
            within_head = false;
          positions.push_back(p);
        }
        return rb.at("completed").get<uint64_t>() >= target && !rb.at("active").get<bool>();
      },
      within, 10ms);
  }
};

// -- libpq and child processes ---------------------------------------------------

/// Runs `sql` on `dsn`; returns the rows affected (or throws).
long pg_exec(const std::string& dsn, const std::string& sql) {
  PGconn* c = PQconnectdb(dsn.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string err = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error("cannot connect to " + dsn + ": " + err);
  }
  PGresult* r = PQexec(c, sql.c_str());
  auto st = PQresultStatus(r);
  std::string err = PQerrorMessage(c);
  long rows = std::atol(PQcmdTuples(r));
  if (st == PGRES_TUPLES_OK)
    rows = PQntuples(r) > 0 ? std::atol(PQgetvalue(r, 0, 0)) : 0;
  PQclear(r);
  PQfinish(c);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    throw std::runtime_error("`" + sql + "` failed: " + err);
  return rows;
}

std::string eventsd_binary() {
  const char* bin = std::getenv("EVENTSD_BINARY");
  if (bin == nullptr || *bin == '\0')
    throw std::runtime_error("EVENTSD_BINARY is not set: run the tests through ctest");
  return bin;
}

} // namespace

TEST_CASE("online rebuild: 202, reads keep answering from the old table, progress is visible, "
          "and the rebuilt read model equals the fold of the log; a second rebuild works too",
          "[e2e][rebuild]") {
  server s;
  http_client c{s.port()};
  auto first = c.post_json("/todo", {{"description", "watched during the rebuild"}});
  REQUIRE(first.status == 201);
  auto watched = ack_of(first);
  std::vector<std::string> samples;
  auto failed = write_events(s.port(), 30000, 12, samples);
  INFO("failed writes: " << failed << (samples.empty() ? "" : ": " + samples.front()));
  REQUIRE(failed == 0);
  auto head = check_read_model_is_fold_of_log(c);
  REQUIRE(head >= 30000);
  auto before = projection_status(c);
  CHECK(before.at("rebuild").at("active") == false);
  CHECK(before.at("rebuild").at("completed") == 0);

  json watched_state{{"id", watched.id},
                     {"description", "watched during the rebuild"},
                     {"status", "Created"},
                     {"version", 1}};
  background_reader reader{s.port(), watched.id, watched_state};
  sleep_for(50ms); // some reads before the rebuild, too

  auto reads_before = reader.reads();
  auto started = c.request("POST", "/admin/projections/todos/rebuild");
  INFO("POST rebuild: " << started.status << " " << started.body);
  REQUIRE(started.status == 202);
  auto body = started.json_body();
  CHECK(body.at("name") == "todos");
  CHECK(body.at("status") == "rebuilding");
  CHECK(started.header("Location") == "/admin/projections");
  // One rebuild at a time.
  auto again = c.request("POST", "/admin/projections/todos/rebuild");
  INFO("second POST while running: " << again.status << " " << again.body);
  CHECK(again.status == 409);
  CHECK(c.request("POST", "/admin/projections/users/rebuild").status == 404);

  // Writes during the rebuild (one per poll) reach the rebuilt table as well.
  std::vector<write_ack> during;
  std::vector<std::string> refused;
  rebuild_watch w;
  bool done = w.until_completed(c, 1, 60000ms, [&] {
    if (during.size() >= 20)
      return;
    auto r = c.post_json("/todo",
                         {{"description", "during the rebuild " + std::to_string(during.size())}});
    if (r.status == 201)
      during.push_back(ack_of(r));
    else
      refused.push_back(std::to_string(r.status) + " " + r.body);
  });
  CHECK(refused.empty());
  CHECK_FALSE(during.empty());
  std::string seen;
  for (auto p : w.positions)
    seen += std::to_string(p) + " ";
  INFO("last status: " << w.last.dump() << "; " << w.polls << " polls, active in "
                       << w.active_seen << " at positions " << seen);
  REQUIRE(done);
  auto reads_during = reader.reads() - reads_before;
  CHECK(w.active_seen > 0);
  // Progress shows: a position part of the way through the log.
  CHECK(std::any_of(w.positions.begin(), w.positions.end(),
                    [&](uint64_t p) { return p > 0 && p < head; }));
  CHECK(w.monotonic);
  CHECK(w.within_head);
  CHECK(w.last.at("rebuild").at("completed") == 1);
  CHECK(w.last.at("lastError").is_null());
  reader.finish();
  INFO(reader.reads() << " reads in all, " << reads_during
                      << " while the rebuild ran; first failure: " << reader.first_failure());
  CHECK(reader.reads() > 10);
  CHECK(reads_during > 0);
  CHECK(reader.failures() == 0);

  check_read_model_is_fold_of_log(c);
  for (auto& d : during)
    CHECK(c.get("/todo/" + d.id).status == 200);

  // A second rebuild, with more events behind it.
  auto more = c.put("/todo/" + watched.id + "/done");
  REQUIRE(more.status == 200);
  // The finished rebuild shows where it ended, not the head that moved on since.
  auto finished = projection_status(c).at("rebuild");
  CHECK(finished.at("active") == false);
  CHECK(finished.at("head") == finished.at("position"));
  CHECK(finished.at("head").get<uint64_t>() < ack_of(more).position);
  auto second = c.request("POST", "/admin/projections/todos/rebuild");
  REQUIRE(second.status == 202);
  rebuild_watch w2;
  bool done2 = w2.until_completed(c, 2, 60000ms);
  INFO("last status: " << w2.last.dump());
  REQUIRE(done2);
  CHECK(w2.last.at("rebuild").at("completed") == 2);
  check_read_model_is_fold_of_log(c);
  auto r = c.get("/todo/" + watched.id);
  REQUIRE(r.status == 200);
  CHECK(r.json_body().at("status") == "Done");
  CHECK(r.json_body().at("version") == 2);
}

TEST_CASE("offline rebuild: `eventsd --rebuild=todos` on a stopped server's store restores a "
          "corrupted read model; it refuses to run beside a live server",
          "[e2e][rebuild][cli]") {
  server s;
  http_client c{s.port()};
  std::vector<std::string> samples;
  auto failed = write_events(s.port(), 2000, 4, samples);
  INFO("failed writes: " << failed << (samples.empty() ? "" : ": " + samples.front()));
  REQUIRE(failed == 0);
  auto head = check_read_model_is_fold_of_log(c);

  auto bin = eventsd_binary();
  std::vector<std::string> cli{bin, "--rebuild=todos", "--storage.dir=" + s.storage_dir(),
                               "--postgres.dsn=" + s.dsn()};
  auto cwd = std::filesystem::path(s.storage_dir()).parent_path().string();
  {
    // The live server holds the store: the CLI must not touch anything.
    auto rows = pg_exec(s.dsn(), "SELECT count(*) FROM todos");
    auto r = run_command(cli, {.cwd = cwd});
    INFO("CLI beside the live server: exit " << r.exit_code() << ": " << r.output);
    CHECK(r.exit_code() == 1);
    CHECK(r.output.find("cannot open the event store") != std::string::npos);
    CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM todos") == rows);
    CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM pg_tables WHERE tablename = 'todos_rebuild'") == 0);
  }

  auto status = s.stop();
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  // Corrupt the read model behind the projection's back (its checkpoint stays).
  auto rows = pg_exec(s.dsn(), "SELECT count(*) FROM todos");
  REQUIRE(rows > 10);
  pg_exec(s.dsn(), "UPDATE todos SET description = 'corrupted', version = 999 "
                   "WHERE created_position % 3 = 0");
  pg_exec(s.dsn(), "DELETE FROM todos WHERE created_position % 3 = 1");
  REQUIRE(pg_exec(s.dsn(), "SELECT count(*) FROM todos") < rows);

  auto r = run_command(cli, {.cwd = cwd});
  INFO("CLI rebuild: exit " << r.exit_code() << ": " << r.output);
  REQUIRE(r.exit_code() == 0);
  CHECK(r.output.find("rebuilt todos up to position " + std::to_string(head)) != std::string::npos);
  CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM todos") == rows);
  CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM pg_tables WHERE tablename = 'todos_rebuild'") == 0);

  s.start();
  http_client c2{s.port()};
  check_read_model_is_fold_of_log(c2);
  auto one = c2.get("/todo?limit=1");
  REQUIRE(one.status == 200);
  CHECK(one.header("X-Read-Model-Position") == std::to_string(head));
  // And the projection goes on from there.
  auto next = c2.post_json("/todo", {{"description", "after the offline rebuild"}});
  REQUIRE(next.status == 201);
  CHECK(c2.get("/todo/" + ack_of(next).id + "?minPosition=" + std::to_string(head + 1)).status == 200);
}

TEST_CASE("while the read-model table is locked for long (a DDL by hand) each read is a 503 "
          "after the readers' lock timeout (2 s), not the query timeout (9 s) per read queued; "
          "reads answer again once it is released",
          "[e2e][read-model][postgres]") {
  using clock_type = std::chrono::steady_clock;
  server s;
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "behind a lock"}}));
  REQUIRE(c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)).status == 200);
  std::thread locker{[&] {
    pg_exec(s.dsn(), "BEGIN; LOCK TABLE todos IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT");
  }};
  sleep_for(500ms);
  // More reads than readers (2): some queue behind others.
  std::vector<std::pair<unsigned, clock_type::duration>> answers(4);
  std::vector<std::thread> readers;
  for (size_t i = 0; i < answers.size(); ++i)
    readers.emplace_back([&, i] {
      http_client mine{s.port()};
      auto began = clock_type::now();
      answers[i].first = mine.get("/todo/" + a.id).status;
      answers[i].second = clock_type::now() - began;
    });
  for (auto& t : readers)
    t.join();
  for (auto& [status, took] : answers) {
    INFO("answered " << status << " after "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(status == 503);
    CHECK(took < 5500ms); // two lock timeouts at most; a statement timeout is 9 s alone
  }
  locker.join();
  CHECK(c.get("/todo/" + a.id).status == 200);
}

TEST_CASE("a read model of another store (the storage directory replaced, the database kept) "
          "is refused until rebuilt: /readyz 503, reads 503 with the remedy, writes go on, and "
          "a rebuild makes it the fold of the new log",
          "[e2e][rebuild][diverged]") {
  server s;
  std::vector<std::string> old_ids;
  {
    http_client c{s.port()};
    for (int i = 0; i < 5; ++i)
      old_ids.push_back(ack_of(c.post_json("/todo", {{"description", "old store " + std::to_string(i)}})).id);
    check_read_model_is_fold_of_log(c);
  }
  // The store is lost (a new disk, `rm -rf var/data`); PostgreSQL keeps the
  // read model and a checkpoint at position 5.
  REQUIRE(s.stop() == 0);
  for (const auto& entry : std::filesystem::directory_iterator{s.storage_dir()})
    std::filesystem::remove_all(entry.path());
  s.start();
  http_client c{s.port()};

  auto ready = c.get("/readyz");
  INFO("/readyz: " << ready.status << " " << ready.body);
  REQUIRE(ready.status == 503);
  auto rj = ready.json_body();
  CHECK(rj["checks"]["readModel"] == "diverged");
  CHECK(rj.value("detail", "").find("another event store") != std::string::npos);
  CHECK(rj.value("detail", "").find("rebuild") != std::string::npos);

  // The old rows are not served as if they were this store's.
  auto old_row = c.get("/todo/" + old_ids.front());
  INFO("GET old todo: " << old_row.status << " " << old_row.body);
  CHECK(old_row.status == 503);
  CHECK(old_row.body.find("/admin/projections/todos/rebuild") != std::string::npos);
  CHECK(c.get("/todo").status == 503);

  // Writes go to the log as always; positions start again at 1.
  auto w = c.post_json("/todo", {{"description", "new store"}});
  REQUIRE(w.status == 201);
  auto a = ack_of(w);
  CHECK(a.position == 1);
  auto waited = c.get("/todo/" + a.id + "?minPosition=1&waitMs=500");
  INFO("minPosition read: " << waited.status << " " << waited.body);
  CHECK(waited.status == 503);
  CHECK_FALSE(waited.header("X-Read-Model-Position"));

  REQUIRE(c.request("POST", "/admin/projections/todos/rebuild").status == 202);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 15000ms, 50ms));
  check_read_model_is_fold_of_log(c);
  // The refusal is over, and the admin view says so (it kept the old error).
  auto status = c.get("/admin/projections").json_body()["items"][0];
  INFO("/admin/projections: " << status.dump());
  CHECK(status["lastError"].is_null());
  CHECK(status["state"] == "live");
  auto seen = c.get("/todo/" + a.id + "?minPosition=1");
  CHECK(seen.status == 200);
  CHECK(c.get("/todo/" + old_ids.front()).status == 404);
  // And it stays this store's across a restart.
  s.restart();
  http_client c2{s.port()};
  CHECK(c2.get("/readyz").status == 200);
  CHECK(c2.get("/todo/" + a.id).status == 200);
}

TEST_CASE("a log restored from an older copy that grew past the read model's checkpoint while "
          "PostgreSQL was down is found diverged when PostgreSQL is back (the checkpoint's event "
          "is not the log's), and a rebuild makes the read model its fold",
          "[e2e][rebuild][diverged]") {
  server_behind_proxy p{{}};
  auto& s = p.srv;
  auto& proxy = p.proxy;
  auto write = [&](int n, const std::string& what) {
    http_client c{s.port()};
    uint64_t last = 0;
    for (int i = 0; i < n; ++i) {
      auto r = c.post_json("/todo", {{"description", what + " " + std::to_string(i)}});
      REQUIRE(r.status == 201);
      last = ack_of(r).position;
    }
    return last;
  };
  REQUIRE(write(5, "kept") == 5);
  REQUIRE(s.stop() == 0);
  temp_dir backup;
  std::filesystem::copy(s.storage_dir(), backup.path() + "/data",
                        std::filesystem::copy_options::recursive);
  s.start();
  REQUIRE(write(3, "lost with the disk") == 8);
  {
    http_client c{s.port()};
    check_read_model_is_fold_of_log(c); // its checkpoint is at 8
  }
  REQUIRE(s.stop() == 0);
  // The disk is lost; the older copy is restored, and the server starts
  // while PostgreSQL is down: its log grows past 8 with other events.
  std::filesystem::remove_all(s.storage_dir());
  std::filesystem::copy(backup.path() + "/data", s.storage_dir(),
                        std::filesystem::copy_options::recursive);
  proxy.cut();
  s.start();
  REQUIRE(write(6, "after the restore") == 11);
  proxy.restore();
  http_client c{s.port()};
  json ready;
  REQUIRE(eventually(
    [&] {
      ready = c.get("/readyz").json_body();
      return ready["checks"]["readModel"] == "diverged";
    },
    20000ms, 50ms));
  INFO("/readyz: " << ready.dump());
  CHECK(ready.value("detail", "").find("an older copy restored") != std::string::npos);
  CHECK(c.get("/todo").status == 503);

  REQUIRE(c.request("POST", "/admin/projections/todos/rebuild").status == 202);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 15000ms, 50ms));
  check_read_model_is_fold_of_log(c);
}

/// Three creates, then waits until the server is ready with them in the read model.
void create_three_and_project(http_client& c) {
  for (int i = 0; i < 3; ++i)
    REQUIRE(c.post_json("/todo", {{"description", "kept " + std::to_string(i)}}).status == 201);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 20ms));
  check_read_model_is_fold_of_log(c);
}

TEST_CASE("an online rebuild asked for while PostgreSQL is unreachable starts, once it is back, "
          "from an empty table: what an interrupted rebuild of another store left is dropped",
          "[e2e][rebuild][postgres-down]") {
  server_behind_proxy p{{}};
  auto& [db, proxy, s] = p;
  http_client c{s.port()};
  create_three_and_project(c);
  // A rebuild killed with -9 leaves its table; this one even of another store.
  pg_exec(db.dsn(), "CREATE TABLE todos_rebuild (LIKE todos INCLUDING ALL)");
  pg_exec(db.dsn(), "INSERT INTO todos_rebuild VALUES "
                    "('00000000-0000-4000-8000-000000000001', 'ghost', 'Done', 7, 1)");
  pg_exec(db.dsn(), "INSERT INTO eventsd_checkpoints (name, position, store) "
                    "VALUES ('todos_rebuild', 1, 'another store')");

  proxy.cut();
  auto started = c.request("POST", "/admin/projections/todos/rebuild");
  INFO("POST rebuild: " << started.status << " " << started.body);
  REQUIRE(started.status == 202);
  sleep_for(300ms);
  proxy.restore();
  rebuild_watch w;
  INFO("last /admin/projections: " << w.last.dump());
  REQUIRE(w.until_completed(c, 1, 20000ms));
  check_read_model_is_fold_of_log(c);
  CHECK(c.get("/todo/00000000-0000-4000-8000-000000000001").status == 404);
}

TEST_CASE("an online rebuild answered 202 while PostgreSQL is unreachable and killed (-9) before "
          "it could begin shows as running from the next start and is taken up once PostgreSQL "
          "is reached, from the start; once it is done, the next start does not rebuild again",
          "[e2e][rebuild][crash][postgres-down]") {
  server_behind_proxy p{{}};
  auto& [db, proxy, s] = p;
  {
    http_client c{s.port()};
    create_three_and_project(c);
    proxy.cut();
    auto started = c.request("POST", "/admin/projections/todos/rebuild");
    INFO("POST rebuild: " << started.status << " " << started.body);
    REQUIRE(started.status == 202);
  }
  s.kill();
  // Nothing of it reached PostgreSQL: only the event store knows of it.
  CHECK(pg_exec(db.dsn(), "SELECT count(*) FROM eventsd_checkpoints WHERE name = 'todos_rebuild'")
        == 0);
  s.start();
  http_client c{s.port()};
  // Still unreachable: noted, so shown as running, at its start, and one at a time.
  REQUIRE(eventually([&] { return projection_status(c).at("rebuild").at("active") == true; },
                     5000ms, 20ms));
  CHECK(projection_status(c).at("rebuild").at("position") == 0);
  CHECK(c.request("POST", "/admin/projections/todos/rebuild").status == 409);
  proxy.restore();
  rebuild_watch w;
  bool done = w.until_completed(c, 1, 20000ms);
  INFO("last status: " << w.last.dump() << "\noutput: " << s.output());
  REQUIRE(done);
  CHECK(s.output().find("taking up the read-model rebuild asked for before the last stop (from "
                        "the start)")
        != std::string::npos);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 20ms));
  check_read_model_is_fold_of_log(c);

  // Done: a restart (even a kill -9) has nothing to take up.
  s.kill();
  s.start();
  http_client c2{s.port()};
  REQUIRE(eventually([&] { return c2.get("/readyz").status == 200; }, 10000ms, 20ms));
  sleep_for(300ms);
  auto rb = projection_status(c2).at("rebuild");
  CHECK(rb.at("active") == false);
  CHECK(rb.at("completed") == 0);
  auto out = s.output(); // of every start
  auto first = out.find("taking up");
  CHECK(first != std::string::npos);
  CHECK(out.find("taking up", first + 1) == std::string::npos);
}

TEST_CASE("an online rebuild that a kill -9 interrupted is taken up at the next start where it "
          "stopped, also when the live table is diverged, and ends with the fold of the log; "
          "one of another store is left alone",
          "[e2e][rebuild][crash]") {
  // Small steps, so that the rebuild is still running when it is killed.
  server s{server_options::with_args({"--projection.rebuild-batch-size=5"})};
  std::vector<std::string> samples;
  REQUIRE(write_events(s.port(), 4000, 4, samples) == 0);
  http_client c0{s.port()};
  auto head = check_read_model_is_fold_of_log(c0);
  // Asks for a rebuild, kills the server while it runs; where it got to.
  auto kill_mid_rebuild = [&] {
    http_client c{s.port()};
    REQUIRE(c.request("POST", "/admin/projections/todos/rebuild").status == 202);
    uint64_t at = 0;
    REQUIRE(eventually(
      [&] {
        auto rb = projection_status(c).at("rebuild");
        at = rb.at("position").get<uint64_t>();
        return rb.at("active").get<bool>() && at > 0;
      },
      10000ms, 1ms));
    s.kill();
    // Its rows and checkpoint, written together.
    auto left = static_cast<uint64_t>(
      pg_exec(s.dsn(), "SELECT position FROM eventsd_checkpoints WHERE name = 'todos_rebuild'"));
    INFO("killed at position " << at << " (seen), " << left << " (stored), head " << head);
    REQUIRE(left >= at);
    REQUIRE(left < head); // else the test proves nothing: it had finished
    return left;
  };
  // Restarts and follows the rebuild taken up to its end.
  auto resumed = [&](uint64_t left) {
    s.start();
    http_client c{s.port()};
    rebuild_watch w;
    bool done = w.until_completed(c, 1, 60000ms);
    INFO("last status: " << w.last.dump() << "\noutput: " << s.output());
    REQUIRE(done);
    CHECK(s.output().find("taking up the read-model rebuild that a stop interrupted (at position "
                          + std::to_string(left))
          != std::string::npos);
    // Taken up where it stopped, not from the start.
    CHECK(std::all_of(w.positions.begin(), w.positions.end(), [&](uint64_t p) { return p >= left; }));
    REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 20ms));
    check_read_model_is_fold_of_log(c);
    CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM eventsd_checkpoints WHERE name = 'todos_rebuild'")
          == 0);
  };

  resumed(kill_mid_rebuild());
  {
    // One rebuild at a time, as before the crash.
    http_client c{s.port()};
    REQUIRE(c.request("POST", "/admin/projections/todos/rebuild").status == 202);
    CHECK(c.request("POST", "/admin/projections/todos/rebuild").status == 409);
    rebuild_watch w;
    REQUIRE(w.until_completed(c, 2, 60000ms));
  }

  // Killed again, and the live table turns out to be another store's (the
  // case a rebuild is asked for): still taken up, and it mends the read model.
  auto left = kill_mid_rebuild();
  pg_exec(s.dsn(), "UPDATE eventsd_checkpoints SET store = 'another store' WHERE name = 'todos'");
  resumed(left);

  // A rebuild table another store's server left is not this server's to take up.
  pg_exec(s.dsn(), "CREATE TABLE todos_rebuild (LIKE todos INCLUDING ALL)");
  pg_exec(s.dsn(), "INSERT INTO eventsd_checkpoints (name, position, store) "
                   "VALUES ('todos_rebuild', 1, 'another store')");
  s.restart();
  http_client c3{s.port()};
  REQUIRE(eventually([&] { return c3.get("/readyz").status == 200; }, 10000ms, 20ms));
  sleep_for(300ms);
  auto rb = projection_status(c3).at("rebuild");
  CHECK(rb.at("active") == false);
  CHECK(rb.at("completed") == 0);
  check_read_model_is_fold_of_log(c3);
  CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM eventsd_checkpoints "
                         "WHERE name = 'todos_rebuild' AND store = 'another store'")
        == 1);
  CHECK(pg_exec(s.dsn(), "SELECT count(*) FROM pg_class WHERE relname = 'todos_rebuild'") == 1);
}

TEST_CASE("an interrupted rebuild whose checkpoint names an event the log does not hold at its "
          "position (an older copy of the store restored) is started over, not taken up",
          "[e2e][rebuild][crash][diverged]") {
  server s;
  {
    http_client c{s.port()};
    for (int i = 0; i < 6; ++i)
      REQUIRE(c.post_json("/todo", {{"description", "kept " + std::to_string(i)}}).status == 201);
    REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 20ms));
    check_read_model_is_fold_of_log(c);
  }
  // What a rebuild of this store killed at position 3 leaves, but made from
  // a log whose event 3 was another (lost with the disk): its rows are not
  // this log's fold.
  const std::string ghost = "00000000-0000-4000-8000-0000000000aa";
  pg_exec(s.dsn(), "CREATE TABLE todos_rebuild (LIKE todos INCLUDING ALL)");
  pg_exec(s.dsn(), "INSERT INTO todos_rebuild VALUES ('" + ghost + "', 'lost', 'Done', 1, 3)");
  REQUIRE(pg_exec(s.dsn(), "INSERT INTO eventsd_checkpoints (name, position, store, last_event) "
                           "SELECT 'todos_rebuild', 3, store, '3:' || gen_random_uuid() "
                           "FROM eventsd_checkpoints WHERE name = 'todos'")
          == 1);
  s.restart();
  http_client c{s.port()};
  rebuild_watch w;
  bool done = w.until_completed(c, 1, 20000ms);
  INFO("last status: " << w.last.dump() << "\noutput: " << s.output());
  REQUIRE(done);
  CHECK(s.output().find("taking up the read-model rebuild that a stop interrupted (from the start)")
        != std::string::npos);
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 20ms));
  check_read_model_is_fold_of_log(c);
  CHECK(c.get("/todo/" + ghost).status == 404);
}
