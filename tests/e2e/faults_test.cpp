// End-to-end fault tests of the real eventsd (issues 3.7 and 4.4): a full disk
// under the event store, bad storage directories and option values at start,
// PostgreSQL stopped under a running server (a private cluster this test starts
// itself), and SIGKILL while the projection catches up a large backlog.
//
// Needs root for the tmpfs mounts and for running PostgreSQL as `postgres`; the
// parts that cannot mount say so (WARN) and skip only that part.
//
// The server bugs these tests found (RocksDB aborting on a full disk, also
// right after a start; the store not resuming once space is freed; config-file
// values not checked; reader connections not replaced after a PostgreSQL
// restart) are fixed; no test here is tagged [!mayfail] any more.
#include "e2e/harness.hpp"
#include "e2e/log_fold.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace eventsd::e2e;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;

std::string eventsd_binary() {
  const char* bin = std::getenv("EVENTSD_BINARY");
  if (bin == nullptr || *bin == '\0')
    throw std::runtime_error("EVENTSD_BINARY is not set: run the tests through ctest, or export "
                             "EVENTSD_BINARY=<build>/eventsd");
  return bin;
}

/// True when `out` is exactly one non-empty line (with or without its newline).
bool one_line(const std::string& out) {
  auto s = out;
  if (!s.empty() && s.back() == '\n')
    s.pop_back();
  return !s.empty() && s.find('\n') == std::string::npos;
}

/// A start refused as a bad configuration: exit code 2, and one line that
/// says `says`.
void check_refused(const command_result& r, const std::string& says) {
  CHECK(r.exit_code() == 2);
  CHECK(one_line(r.output));
  CHECK(r.output.find(says) != std::string::npos);
}

/// A DSN nothing listens on (eventsd starts without PostgreSQL).

// -- tmpfs ---------------------------------------------------------------------

/// A tmpfs mounted on `dir` (created when missing), unmounted (lazily) on destruction.
class tmpfs_mount {
public:
  tmpfs_mount(const std::string& dir, const std::string& options, unsigned long flags = 0)
      : dir_(dir) {
    std::filesystem::create_directories(dir);
    if (::mount("tmpfs", dir.c_str(), "tmpfs", flags, options.c_str()) == 0)
      mounted_ = true;
    else
      error_ = std::strerror(errno);
  }
  ~tmpfs_mount() {
    if (mounted_)
      ::umount2(dir_.c_str(), MNT_DETACH);
  }
  tmpfs_mount(const tmpfs_mount&) = delete;
  tmpfs_mount& operator=(const tmpfs_mount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }

private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

/// An 8 MiB tmpfs in a temporary directory, for the full-disk tests.
struct small_disk {
  temp_dir base{"eventsd-faults-disk-"};
  tmpfs_mount fs{base.path() + "/fs", "size=8m,mode=0755"};

  /// False (with a WARN naming why) when no tmpfs can be mounted here; as
  /// root (CI, scripts/test) the mount must work, and the test fails.
  bool usable() const {
    if (!fs.mounted() && ::geteuid() == 0)
      FAIL("cannot mount a tmpfs as root: " << fs.error());
    if (!fs.mounted())
      WARN("skipped: cannot mount a tmpfs here (" << fs.error() << "); this test needs root");
    return fs.mounted();
  }
  std::string store() const { return fs.dir() + "/data"; }
  std::string filler() const { return fs.dir() + "/filler"; }
};

uint64_t free_bytes(const std::string& dir) {
  struct statvfs st{};
  if (::statvfs(dir.c_str(), &st) != 0)
    throw std::runtime_error("statvfs(" + dir + "): " + std::strerror(errno));
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

/// Writes zeros to `path` until only about `leave` bytes are free on its file system.
void fill_disk(const std::string& path, uint64_t leave) {
  auto dir = std::filesystem::path(path).parent_path().string();
  auto free = free_bytes(dir);
  uint64_t want = free > leave ? free - leave : 0;
  int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw std::runtime_error("open(" + path + "): " + std::strerror(errno));
  std::vector<char> zeros(64 * 1024, 0);
  while (want > 0) {
    auto n = ::write(fd, zeros.data(), std::min<uint64_t>(want, zeros.size()));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    want -= static_cast<uint64_t>(n);
  }
  ::close(fd);
}

// -- answers -------------------------------------------------------------------

bool is_problem(const response& r, unsigned status) {
  if (r.status != status)
    return false;
  if (r.header("Content-Type").value_or("").rfind("application/problem+json", 0) != 0)
    return false;
  auto j = json::parse(r.body, nullptr, false);
  return j.is_object() && j.value("status", 0u) == status && j.contains("type")
         && j.contains("title") && j.contains("detail");
}

// -- writing many events -----------------------------------------------------------


// -- a private PostgreSQL cluster ------------------------------------------------

/// A PostgreSQL cluster of its own (initdb into a fresh directory under /tmp, run
/// as `postgres` on a free loopback port), so that stopping it disturbs nobody.
/// Stopped (immediate) and removed on destruction. REQUIRES: root and a `postgres` user.
class private_cluster {
public:
  private_cluster() {
    const char* bin = std::getenv("EVENTSD_PG_BIN");
    bin_ = bin && *bin ? bin : "/usr/lib/postgresql/15/bin";
    passwd* pw = ::getpwnam("postgres");
    if (::geteuid() != 0 || pw == nullptr)
      throw std::runtime_error("a private PostgreSQL cluster needs root and a `postgres` user");
    char tmpl[] = "/tmp/eventsd-faults-pg-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr)
      throw std::runtime_error(std::string{"mkdtemp: "} + std::strerror(errno));
    dir_ = tmpl;
    if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0)
      throw std::runtime_error("chown " + dir_ + ": " + std::strerror(errno));
    port_ = free_port();
    auto r = as_postgres({bin_ + "/initdb", "-D", dir_ + "/data", "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8"});
    if (r.exit_code() != 0)
      throw std::runtime_error("initdb failed:\n" + r.output);
    start();
  }

  ~private_cluster() {
    if (running_)
      as_postgres({bin_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"});
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  private_cluster(const private_cluster&) = delete;
  private_cluster& operator=(const private_cluster&) = delete;

  void start() {
    auto r = as_postgres({bin_ + "/pg_ctl", "-D", dir_ + "/data", "-l", dir_ + "/postgres.log",
                          "-w", "-t", "30", "-o",
                          "-p " + std::to_string(port_) + " -k " + dir_
                            + " -c listen_addresses=127.0.0.1 -c fsync=off"
                              " -c full_page_writes=off",
                          "start"});
    if (r.exit_code() != 0)
      throw std::runtime_error("pg_ctl start failed:\n" + r.output + "\n" + log());
    running_ = true;
  }

  /// Stops it as a crash would: no shutdown checkpoint, connections cut.
  void stop_immediately() {
    auto r = as_postgres({bin_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"});
    if (r.exit_code() != 0)
      throw std::runtime_error("pg_ctl stop failed:\n" + r.output);
    running_ = false;
  }

  std::string dsn() const {
    return "host=127.0.0.1 port=" + std::to_string(port_)
           + " dbname=postgres user=postgres connect_timeout=2";
  }

  std::string log() const {
    std::ifstream in{dir_ + "/postgres.log"};
    std::stringstream s;
    s << in.rdbuf();
    auto t = s.str();
    return t.size() > 4000 ? t.substr(t.size() - 4000) : t;
  }

private:
  command_result as_postgres(std::vector<std::string> args) {
    args.insert(args.begin(), {"runuser", "-u", "postgres", "--"});
    return run_command(args, {.timeout = 60s, .cwd = "/"});
  }

  std::string bin_;
  std::string dir_;
  uint16_t port_ = 0;
  bool running_ = false;
};

/// Cuts one database of the shared test cluster off from its clients, as an
/// outage of the read model would: new connections are refused and existing ones
/// terminated; `restore()` lets them in again. Restores on destruction.
class read_model_switch {
public:
  explicit read_model_switch(std::string dbname) : dbname_(std::move(dbname)) {}
  ~read_model_switch() {
    if (cut_)
      try {
        restore();
      } catch (...) {
      }
  }
  read_model_switch(const read_model_switch&) = delete;
  read_model_switch& operator=(const read_model_switch&) = delete;

  void cut() {
    admin("ALTER DATABASE " + dbname_ + " ALLOW_CONNECTIONS false");
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + dbname_
          + "' AND pid <> pg_backend_pid()");
    cut_ = true;
  }
  void restore() {
    admin("ALTER DATABASE " + dbname_ + " ALLOW_CONNECTIONS true");
    cut_ = false;
  }

private:
  static void admin(const std::string& sql) {
    PGconn* c = PQconnectdb(test_dsn().c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      std::string err = PQerrorMessage(c);
      PQfinish(c);
      throw std::runtime_error("cannot connect to EVENTSD_TEST_PG_DSN: " + err);
    }
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    std::string err = PQerrorMessage(c);
    PQclear(r);
    PQfinish(c);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      throw std::runtime_error("`" + sql + "` failed: " + err);
  }

  std::string dbname_;
  bool cut_ = false;
};

// -- the disk-full scenario --------------------------------------------------------

/// One write while the disk fills up, identified by its unique description.
struct fill_write {
  std::string description;
  std::string type; // "created" or "description-changed"
  unsigned status = 0;   // 0: no answer (connection failed)
  std::string body;
  std::optional<write_ack> ack;
  bool problem_json = false;
};

/// Writes from `threads` clients until one answers 503, then `extra` more each;
/// every write carries a unique ~200-character description.
std::vector<fill_write> write_until_full(uint16_t port, int threads, int extra, bool& died) {
  std::atomic<bool> full{false};
  std::atomic<bool> dead{false};
  std::mutex mtx;
  std::vector<fill_write> all;
  std::string pad(180, 'x');
  auto worker = [&](int t) {
    std::vector<fill_write> mine;
    std::vector<std::string> ids;
    int after_full = 0;
    http_client c{port};
    for (int i = 0; i < 20000 && !dead; ++i) {
      if (full && after_full++ >= extra)
        break;
      fill_write w;
      w.description = "fill " + std::to_string(t) + "/" + std::to_string(i) + " " + pad;
      try {
        response r;
        if (ids.empty() || i % 3 != 0) {
          w.type = "created";
          r = c.post_json("/todo", {{"description", w.description}});
        } else {
          w.type = "description-changed";
          r = c.put_json("/todo/change-description",
                         {{"id", ids[static_cast<size_t>(i) % ids.size()]},
                          {"description", w.description}});
        }
        w.status = r.status;
        w.body = r.body.substr(0, 400);
        w.problem_json = is_problem(r, r.status);
        if (r.status == 200 || r.status == 201) {
          w.ack = ack_of(r);
          if (w.type == "created")
            ids.push_back(w.ack->id);
        } else if (r.status == 503) {
          full = true;
        }
      } catch (const std::exception& e) {
        w.body = e.what();
        dead = true;
      }
      mine.push_back(std::move(w));
    }
    std::lock_guard lock{mtx};
    all.insert(all.end(), mine.begin(), mine.end());
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back(worker, t);
  for (auto& th : ts)
    th.join();
  died = dead;
  return all;
}

/// Checks `$all` against the writes: positions 1..n without gaps, every 2xx at
/// the position, version and stream its answer named, no 503 anywhere.
void check_log_against(const std::vector<json>& events, const std::vector<fill_write>& writes) {
  std::map<std::string, const json*> by_description;
  for (size_t i = 0; i < events.size(); ++i) {
    INFO("event " << events[i].dump());
    REQUIRE(events[i].at("position") == i + 1);
    auto& d = events[i].at("data");
    if (d.contains("description"))
      by_description[d.at("description").get<std::string>()] = &events[i];
  }
  size_t acked = 0, refused = 0, lost = 0, leaked = 0;
  for (auto& w : writes) {
    auto found = by_description.find(w.description);
    if (w.ack) {
      ++acked;
      if (found == by_description.end()) {
        if (++lost <= 3)
          UNSCOPED_INFO("acknowledged but not in $all: " << w.type << " " << w.body);
        continue;
      }
      auto& e = *found->second;
      INFO("acknowledged " << w.body << "; the log has " << e.dump().substr(0, 300));
      CHECK(e.at("position") == w.ack->position);
      CHECK(e.at("version") == w.ack->version);
      CHECK(e.at("stream") == "todo-" + w.ack->id);
      CHECK(e.at("type") == w.type);
    } else if (w.status == 503) {
      ++refused;
      if (found != by_description.end() && ++leaked <= 3)
        UNSCOPED_INFO("answered 503 but in $all: " << found->second->dump().substr(0, 300));
    }
  }
  CHECK(lost == 0);
  CHECK(leaked == 0);
  INFO(acked << " acknowledged, " << refused << " refused");
  CHECK(acked > 0);
}

/// Starts the stopped `s` again and checks its log against `writes`
/// (check_log_against), then that it takes writes, continuing the positions.
void check_restarted(server& s, const std::vector<fill_write>& writes) {
  s.start();
  http_client c{s.port()};
  auto events = read_all(c);
  check_log_against(events, writes);
  auto next = c.post_json("/todo", {{"description", "after the restart"}});
  INFO("after the restart: " << next.status << " " << next.body);
  REQUIRE(next.status == 201);
  CHECK(ack_of(next).position == events.size() + 1);
}

} // namespace

TEST_CASE("a full disk loses no acknowledged write and leaks no refused one, across a restart",
          "[e2e][faults][disk-full]") {
  // One writer (one append per batch) and four (group commits of several).
  int writers = GENERATE(1, 4);
  CAPTURE(writers);
  small_disk disk;
  if (!disk.usable())
    return;
  auto store = disk.store();
  auto filler = disk.filler();
  server s{server_options::with_args({"--storage.dir=" + store})};
  {
    http_client c{s.port()};
    REQUIRE(c.post_json("/todo", {{"description", "before the disk fills"}}).status == 201);
  }
  fill_disk(filler, 160 * 1024);

  bool died = false;
  auto writes = write_until_full(s.port(), writers, 5, died);
  size_t n503 = std::count_if(writes.begin(), writes.end(), [](auto& w) { return w.status == 503; });
  for (auto& w : writes) {
    INFO("answer " << w.status << ": " << w.body);
    CHECK((w.status == 200 || w.status == 201 || w.status == 503 || w.status == 0));
  }
  INFO("eventsd output:\n" << s.output().substr(s.output().size() > 2000 ? s.output().size() - 2000 : 0));
  REQUIRE_FALSE(died);
  REQUIRE(n503 > 0);

  std::filesystem::remove(filler);
  s.stop();
  check_restarted(s, writes);
}

TEST_CASE("a failed write RocksDB cannot resume from while open (no inode for a new WAL file) "
          "stops eventsd with status 70 for its supervisor; restarted, every acknowledged write "
          "is there once and no refused one",
          "[e2e][faults][disk-full]") {
  temp_dir base{"eventsd-faults-inodes-"};
  tmpfs_mount fs{base.path() + "/fs", "size=512m,nr_inodes=64,mode=0755"};
  if (!fs.mounted()) {
    if (::geteuid() == 0)
      FAIL("cannot mount a tmpfs as root: " << fs.error());
    WARN("skipped: cannot mount a tmpfs here (" << fs.error() << "); this test needs root");
    return;
  }
  // Memtables of 32 MiB at most: the switch to a new WAL file comes soon.
  server s{server_options::with_args(
    {"--storage.dir=" + fs.dir() + "/data", "--storage.block-cache-mb=8"})};
  std::vector<std::string> fillers;
  for (int i = 0;; ++i) {
    auto f = fs.dir() + "/inode-" + std::to_string(i);
    if (!std::ofstream{f})
      break;
    fillers.push_back(f);
  }
  REQUIRE_FALSE(fillers.empty());
  bool died = false;
  auto writes = write_until_full(s.port(), 4, 5, died);
  // Space back does not help an open store RocksDB will not resume.
  for (auto& f : fillers)
    std::filesystem::remove(f);
  auto status = s.wait_exit(20s);
  INFO("eventsd output:\n" << s.output().substr(s.output().size() > 3000 ? s.output().size() - 3000 : 0));
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 70);
  CHECK(s.output().find("the event store cannot recover from this failure while open")
        != std::string::npos);
  CHECK(s.output().find("the log writer stopped unexpectedly") != std::string::npos);
  for (auto& w : writes) {
    INFO("answer " << w.status << ": " << w.body);
    CHECK((w.status == 200 || w.status == 201 || w.status == 503 || w.status == 0));
  }

  check_restarted(s, writes);
}

TEST_CASE("a full disk answers 503 problem+json and the server stays up while writes keep "
          "coming",
          "[e2e][faults][disk-full]") {
  small_disk disk;
  if (!disk.usable())
    return;
  server s{server_options::with_args({"--storage.dir=" + disk.store()})};
  http_client c{s.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the disk fills"}}).status == 201);
  fill_disk(disk.filler(), 160 * 1024);

  bool died = false;
  auto writes = write_until_full(s.port(), 4, 10, died);
  INFO("eventsd output:\n" << s.output().substr(s.output().size() > 3000 ? s.output().size() - 3000 : 0));
  // Bug: the process aborts (RocksDB's assertion on its info LOG, which shares
  // the full directory), instead of answering 503.
  REQUIRE_FALSE(died);
  size_t n503 = 0;
  for (auto& w : writes) {
    if (w.status != 503)
      continue;
    ++n503;
    INFO("503 answer: " << w.body);
    CHECK(w.problem_json);
    CHECK(w.body.find("not writable") != std::string::npos);
    CHECK(w.body.find("nothing was appended") != std::string::npos); // tmpfs: no sync can fail
    CHECK(w.body.find("No space left on device") != std::string::npos);
    CHECK(w.body.find("writable: write:") == std::string::npos); // one wording, however it failed
    CHECK(w.body.find("writable: store not writable") == std::string::npos);
    CHECK(w.body.find(disk.store()) == std::string::npos); // no file of the server's disk
  }
  REQUIRE(n503 > 0);
  CHECK(c.get("/healthz").status == 200);
  check_log_against(read_all(c), writes); // reads still work
  // The log says it once, with the reason, and RocksDB's repeated warnings
  // are not a line each.
  auto out = s.output();
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (auto at = out.find(what); at != std::string::npos; at = out.find(what, at + 1))
      ++n;
    return n;
  };
  // Once per time it stopped being writable (a resume may succeed between
  // two failures when RocksDB frees a file), not once per refused write.
  auto unwritable = count("eventsd: event store not writable");
  CHECK(unwritable >= 1);
  CHECK(unwritable == count("eventsd: event store writable again") + 1);
  CHECK(unwritable * 4 <= n503 + 4);
  CHECK(out.find("No space left on device") != std::string::npos);
  CHECK(count("eventsd: rocksdb:") <= 20);
}

TEST_CASE("a server started on a full disk opens the store read-only: reads are served, writes "
          "and /readyz answer 503, and a restart after freeing space writes again",
          "[e2e][faults][disk-full]") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto filler = disk.filler();
  server s{server_options::with_args({"--storage.dir=" + disk.store()})};
  http_client c{s.port()};
  auto first = c.post_json("/todo", {{"description", "before the disk fills"}});
  REQUIRE(first.status == 201);
  auto todo_id = first.json_body()["id"].get<std::string>();
  fill_disk(filler, 160 * 1024);
  bool died = false;
  auto writes = write_until_full(s.port(), 2, 5, died);
  REQUIRE_FALSE(died);
  s.kill();
  // Not a byte left: the open cannot write its new MANIFEST.
  fill_disk(filler + "2", 0);

  s.start(); // the bug: "cannot open the event store … No space left on device", exit 1
  INFO("eventsd output:\n" << s.output().substr(s.output().size() > 2000 ? s.output().size() - 2000 : 0));
  CHECK(s.output().find("open read-only") != std::string::npos);
  http_client r{s.port()};
  auto while_full = read_all(r);
  check_log_against(while_full, writes);
  REQUIRE(while_full.size() >= 1);
  CHECK(r.get("/todo/" + todo_id + "/history").status == 200);
  auto ready = r.get("/readyz");
  INFO("/readyz: " << ready.body);
  CHECK(ready.status == 503);
  CHECK(ready.body.find("read-only") != std::string::npos);
  auto refused = r.put("/todo/" + todo_id + "/done");
  INFO("PUT done while read-only: " << refused.status << " " << refused.body);
  CHECK(refused.status == 503);
  CHECK(refused.body.find("read-only") != std::string::npos);
  CHECK(refused.header("Retry-After") == std::optional<std::string>{"60"}); // only a restart helps
  CHECK(read_all(r).size() == while_full.size());
  // An online rebuild cannot be noted, so it is not started (a 202 would be
  // lost with the next stop).
  auto rebuild = r.request("POST", "/admin/projections/todos/rebuild");
  INFO("POST rebuild while read-only: " << rebuild.status << " " << rebuild.body);
  CHECK(rebuild.status == 503);
  CHECK(rebuild.body.find("the rebuild cannot be noted") != std::string::npos);
  CHECK(rebuild.header("Retry-After") == std::optional<std::string>{"60"}); // only a restart helps
  CHECK(r.get("/admin/projections").json_body().at("items").at(0).at("rebuild").at("active")
        == false);
  // It holds the store as a writable one would: a second eventsd on the same
  // directory does not open it (read-only here too, or read-write once space
  // is freed, its compactions deleting files the first still reads).
  auto second = run_command({eventsd_binary(), "--storage.dir=" + disk.store(), "--http.port=0",
                             "--postgres.dsn=" + unreachable_dsn},
                            {.timeout = 20s, .cwd = "/", .stop_at = "listening on"});
  INFO("second eventsd: " << second.output);
  CHECK_FALSE(second.timed_out);
  CHECK(second.exit_code() == 1);
  CHECK(second.output.find("has this store open") != std::string::npos);

  std::filesystem::remove(filler);
  std::filesystem::remove(filler + "2");
  s.restart();
  http_client w{s.port()};
  auto next = w.post_json("/todo", {{"description", "after freeing space and a restart"}});
  INFO("after the restart: " << next.status << " " << next.body);
  REQUIRE(next.status == 201);
  CHECK(ack_of(next).position == while_full.size() + 1);
  check_log_against(read_all(w), writes);
}

TEST_CASE("once space is freed the next write succeeds (the store resumes on the next append) "
          "and a restart keeps everything",
          "[e2e][faults][disk-full]") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto store = disk.store();
  auto filler = disk.filler();
  server s{server_options::with_args({"--storage.dir=" + store})};
  http_client c{s.port()};
  auto first = c.post_json("/todo", {{"description", "before the disk fills"}});
  REQUIRE(first.status == 201);
  auto todo_id = first.json_body()["id"].get<std::string>();
  fill_disk(filler, 160 * 1024);

  // One writer, stopping at the first 503 (fewer chances for the abort above).
  bool died = false;
  auto writes = write_until_full(s.port(), 1, 0, died);
  INFO("eventsd output:\n" << s.output().substr(s.output().size() > 3000 ? s.output().size() - 3000 : 0));
  REQUIRE_FALSE(died);
  REQUIRE(writes.back().status == 503);
  // A refused write to an existing todo: afterwards its stream must still be
  // at version 1 for the writer too (the log caches recent stream heads).
  auto refused = c.put("/todo/" + todo_id + "/done");
  INFO("PUT done while full: " << refused.status << " " << refused.body);
  CHECK(refused.status == 503);
  auto while_full = read_all(c);
  check_log_against(while_full, writes);

  std::filesystem::remove(filler);
  auto freed = clock_type::now();
  auto r = c.post_json("/todo", {{"description", "first write after freeing space"}});
  INFO("first write after freeing space: " << r.status << " " << r.body);
  CHECK(r.status == 201);
  // Bug: RocksDB's own recovery (SstFileManager) holds the store, so Resume()
  // answers Busy, until 64 MiB (write_buffer_size) are free; on this 8 MiB disk
  // that is never. Give it well over its 5 s poll before failing.
  bool resumed = r.status == 201 || eventually(
                                      [&] {
                                        r = c.post_json("/todo", {{"description", "after freeing space"}});
                                        return r.status == 201;
                                      },
                                      7000ms, 250ms);
  INFO("last answer after freeing space: " << r.status << " " << r.body << " after "
                                           << std::chrono::duration_cast<std::chrono::milliseconds>(
                                                clock_type::now() - freed)
                                                .count()
                                           << " ms");
  REQUIRE(resumed);
  CHECK(ack_of(r).position == while_full.size() + 1);
  // The log is read from the pipe by another thread: give it a moment.
  CHECK(eventually([&] { return s.output().find("eventsd: event store writable again")
                                != std::string::npos; },
                   2000ms, 50ms));
  auto done = c.put("/todo/" + todo_id + "/done");
  INFO("PUT done after the store resumed: " << done.status << " " << done.body);
  CHECK(done.status == 200);
  CHECK(ack_of(done).version == 2);

  s.stop();
  s.start();
  http_client c2{s.port()};
  auto after = read_all(c2);
  check_log_against(after, writes);
  CHECK(after.size() >= while_full.size() + 1);
}

TEST_CASE("a disk that fills before the first write: 503s, the server stays up, and once space "
          "is freed the store resumes at position 1",
          "[e2e][faults][disk-full]") {
  // Right after a start (or a memtable flush) RocksDB's memtables are empty;
  // its Resume() then flushed nothing, kept the WAL writer that had failed,
  // and the next write aborted the process (RocksDB 7.8's assertion).
  small_disk disk;
  if (!disk.usable())
    return;
  auto filler = disk.filler();
  server s{server_options::with_args({"--storage.dir=" + disk.store()})};
  http_client c{s.port()};
  fill_disk(filler, 0);
  for (int i = 0; i < 4; ++i) {
    auto r = c.post_json("/todo", {{"description", "while the disk is full"}});
    INFO("write " << i << " while full: " << r.status << " " << r.body << "\neventsd output:\n"
                  << s.output().substr(s.output().size() > 2000 ? s.output().size() - 2000 : 0));
    REQUIRE(r.status == 503);
  }
  // Not ready while writes fail (a load balancer should stop sending them),
  // also between them: the store recovers before each write (and every
  // second) and fails again with it.
  std::atomic<bool> writing{true};
  std::atomic<int> written{0};
  std::thread writer{[&] {
    http_client w{s.port()};
    while (writing)
      if (w.post_json("/todo", {{"description", "still full"}}).status != 503)
        ++written;
  }};
  std::vector<std::string> ready_answers;
  for (int i = 0; i < 25; ++i) {
    auto not_ready = c.get("/readyz");
    if (not_ready.status != 503 || not_ready.json_body()["checks"]["eventStore"] != "not writable")
      ready_answers.push_back(std::to_string(not_ready.status) + " " + not_ready.body);
    std::this_thread::sleep_for(100ms);
  }
  writing = false;
  writer.join();
  REQUIRE(written == 0);
  INFO("/readyz answers while full that were not 503 `not writable`:");
  for (auto& a : ready_answers)
    INFO(a);
  CHECK(ready_answers.empty());
  std::filesystem::remove(filler);
  // ... and ready again once space is freed (5 s after the last failed
  // write), with no write to trigger it.
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 100ms));
  auto r = c.post_json("/todo", {{"description", "after freeing space"}});
  INFO("after freeing space: " << r.status << " " << r.body);
  REQUIRE(r.status == 201);
  CHECK(ack_of(r).position == 1);
  CHECK(read_all(c).size() == 1);
}

TEST_CASE("eventsd refuses to start on a storage directory it cannot use: non-zero exit, "
          "one-line reason, nothing changed",
          "[e2e][faults][startup]") {
  auto bin = eventsd_binary();
  temp_dir d{"eventsd-faults-start-"};
  auto file = d.path() + "/store-is-a-file";
  {
    std::ofstream out{file};
    out << "not a database\n";
  }
  auto run = [&](const std::string& dir) {
    return run_command({bin, "--storage.dir=" + dir, "--http.port=0", "--postgres.dsn=" + unreachable_dsn},
                       {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  };

  SECTION("the path is a regular file") {
    auto r = run(file);
    INFO("output: " << r.output);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code() == 1);
    CHECK(one_line(r.output));
    CHECK(r.output.rfind("eventsd: cannot open the event store in " + file, 0) == 0);
    std::ifstream in{file};
    std::string content{std::istreambuf_iterator<char>{in}, {}};
    CHECK(content == "not a database\n");
  }
  SECTION("the path lies below a regular file") {
    auto r = run(file + "/data");
    INFO("output: " << r.output);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code() == 1);
    CHECK(one_line(r.output));
    CHECK(r.output.find("cannot open the event store") != std::string::npos);
  }
  SECTION("another eventsd has the store open") {
    server first;
    auto r = run(first.storage_dir());
    INFO("output: " << r.output);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code() == 1);
    CHECK(one_line(r.output));
    CHECK(r.output.find("another eventsd say, has this store open") != std::string::npos);
    http_client c{first.port()};
    CHECK(c.get("/healthz").status == 200); // and the first one is untouched
  }
  SECTION("the file system is read-only") {
    tmpfs_mount ro{d.path() + "/ro", "size=1m", MS_RDONLY};
    if (!ro.mounted()) {
      if (::geteuid() == 0)
        FAIL("cannot mount a read-only tmpfs as root: " << ro.error());
      WARN("skipped: cannot mount a read-only tmpfs here (" << ro.error() << ")");
      return;
    }
    auto r = run(ro.dir() + "/data");
    INFO("output: " << r.output);
    CHECK_FALSE(r.timed_out);
    CHECK(r.exit_code() != 0);
    CHECK(one_line(r.output));
    CHECK(r.output.find("cannot open the event store") != std::string::npos);
  }
}

namespace {

/// eventsd on `dir` (no PostgreSQL), sent `signals` as soon as it has created
/// `dir` — right before it opens the store, long before it listens — and run
/// to its end.
command_result signalled_while_starting(const temp_dir& d, const std::string& dir,
                                        const std::vector<int>& signals) {
  bool seen = false;
  auto r = run_command({eventsd_binary(), "--storage.dir=" + dir, "--http.port=0",
                        "--postgres.dsn=" + unreachable_dsn},
                       {.timeout = 30s, .cwd = d.path(), .with_child = [&](pid_t pid) {
                         seen = eventually([&] { return std::filesystem::exists(dir); }, 10s, 1ms);
                         for (int s : signals)
                           ::kill(pid, s);
                       }});
  if (!seen)
    throw std::runtime_error("eventsd did not create " + dir + " within 10 s: " + r.output);
  return r;
}

} // namespace

TEST_CASE("a SIGINT, SIGTERM or SIGHUP while eventsd opens its store stops it cleanly once it "
          "has started: exit 0, the store closed and usable",
          "[e2e][faults][startup]") {
  auto sig = GENERATE(SIGINT, SIGTERM, SIGHUP);
  temp_dir d{"eventsd-faults-early-signal-"};
  auto dir = d.path() + "/data";
  auto r = signalled_while_starting(d, dir, {sig});
  INFO("signal " << sig << " -> status " << r.status << ": " << r.output);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code() == 0); // not killed by the signal's default action
  CHECK(r.output.find("eventsd: shutting down") != std::string::npos);
  auto again = run_command({eventsd_binary(), "--storage.dir=" + dir, "--http.port=0",
                            "--postgres.dsn=" + unreachable_dsn},
                           {.timeout = 30s, .cwd = d.path(), .stop_at = "listening on"});
  INFO("started again: " << again.output);
  CHECK(again.output.find("listening on") != std::string::npos); // then stopped by us
}

TEST_CASE("a second stop signal right after the first while eventsd starts is ignored, as it is "
          "while eventsd stops: it still stops cleanly",
          "[e2e][faults][startup]") {
  temp_dir d{"eventsd-faults-early-signals-"};
  // Two kinds, so that the kernel does not merge them.
  auto r = signalled_while_starting(d, d.path() + "/data", {SIGINT, SIGTERM});
  INFO("status " << r.status << ": " << r.output);
  CHECK_FALSE(r.timed_out);
  CHECK(r.exit_code() == 0);
  CHECK(r.output.find("eventsd: already shutting down") != std::string::npos);
  CHECK(r.output.find("listening on") != std::string::npos);
  CHECK(r.output.find("eventsd: shutting down") != std::string::npos);
}

namespace {

/// Whether /proc says process `pid` ignores signal `n`.
bool ignores(pid_t pid, int n) {
  std::ifstream status{"/proc/" + std::to_string(pid) + "/status"};
  for (std::string line; std::getline(status, line);)
    if (line.rfind("SigIgn:", 0) == 0)
      return ((std::stoull(line.substr(7), nullptr, 16) >> (n - 1)) & 1) != 0;
  return false;
}

} // namespace

TEST_CASE("an offline rebuild gets the signal actions eventsd started with: SIGINT ignored by "
          "the parent (a background job) stays ignored, SIGTERM ends it",
          "[e2e][faults][startup]") {
  temp_dir d{"eventsd-faults-rebuild-signals-"};
  // A PostgreSQL that accepts and never answers: the rebuild waits in its
  // connect (connect_timeout) long enough to be looked at.
  silent_listener hang;
  auto dsn = "host=127.0.0.1 port=" + std::to_string(hang.port())
             + " dbname=eventsd user=postgres connect_timeout=10";
  bool stayed_ignored = false, survived_sigint = false;
  auto previous = std::signal(SIGINT, SIG_IGN); // inherited, as by `eventsd … &` in a script
  auto r = run_command({eventsd_binary(), "--storage.dir=" + d.path() + "/data",
                        "--postgres.dsn=" + dsn, "--rebuild=todos"},
                       {.timeout = 30s, .cwd = d.path(), .with_child = [&](pid_t pid) {
                         // The rebuild runs once it connects to PostgreSQL; before, while
                         // eventsd started, SIGINT was caught (asio's handler).
                         pollfd p{hang.fd(), POLLIN, 0};
                         REQUIRE(::poll(&p, 1, 10000) == 1);
                         int conn = ::accept(hang.fd(), nullptr, nullptr);
                         stayed_ignored = ignores(pid, SIGINT);
                         ::kill(pid, SIGINT);
                         sleep_for(300ms);
                         survived_sigint = ::kill(pid, 0) == 0;
                         ::kill(pid, SIGTERM);
                         ::close(conn);
                       }});
  std::signal(SIGINT, previous);
  INFO("status " << r.status << ": " << r.output);
  CHECK(stayed_ignored);
  CHECK(survived_sigint);
  CHECK(WIFSIGNALED(r.status));
  CHECK(WTERMSIG(r.status) == SIGTERM);
}

TEST_CASE("a bad option value stops eventsd with exit code 2 and a one-line reason, before it "
          "touches the storage directory",
          "[e2e][faults][startup]") {
  auto bin = eventsd_binary();
  temp_dir d{"eventsd-faults-options-"};
  auto dir = d.path() + "/data";
  struct bad {
    std::vector<std::string> args;
    std::string names; // what the reason must mention
  };
  std::vector<bad> cases{
    {{"--http.port=eighty"}, "--http.port=eighty"},
    {{"--http.port=70000"}, "--http.port=70000: too large (at most 65535)"},
    {{"--storage.dir="}, "--storage.dir: needs a value"},
    {{"--http.address=999.1.1.1"}, "--http.address `999.1.1.1`: not an IPv4 or IPv6 address"},
    // libpq's own syntax check, without repeating the DSN (it may hold a password).
    {{"--postgres.dsn=hots=127.0.0.1 password=secret"}, "invalid connection option \"hots\""},
    // libpq quotes parts of a malformed DSN, passwords included: none is repeated.
    {{"--postgres.dsn=postgresql://u:secret@[::1/db"}, "in URI: \"…\""},
    {{"--postgres.dsn=postgresql://u:se\"cret@[::1/db"}, "--postgres.dsn: "},
    {{"--postgres.dsn=postgresql://u:p%zzsecret@h/db"}, "invalid percent-encoded token: \"…\""},
    {{"--postgres.dsn=host=x password=my secret"}, "missing \"=\" after \"…\""},
    {{"--postgres.dsn=postgresql://u:se/cret@host/db"}, "its port is not a number"},
    {{"--postgres.dsn=host=127.0.0.1 port=abc password=secret"}, "its port is not a number"},
    {{"--postgres.dsn=host=127.0.0.1 sslmode=bogus password=secret"}, "its sslmode is none of"},
    {{"--http.admin-token= "}, "--http.admin-token: needs a value"},
    {{"--postgres.query-timeout-ms=1"}, "--postgres.query-timeout-ms 1"},
    {{"--http.threads=0"}, "--http.threads"},
    {{"--http.threads=-1"}, "--http.threads=-1"},
    {{"--storage.sync=maybe"}, "--storage.sync"},
    {{"--storage.max-batch=0"}, "--storage.max-batch"},
    {{"--projection.mode=sometimes"}, "--projection.mode"},
    {{"--projection.batch-size=0"}, "--projection.batch-size"},
    {{"--projection.interval-ms=soon"}, "--projection.interval-ms=soon"},
    {{"--rebuild=users"}, "--rebuild"},
    {{"--no-such-option=1"}, "unknown option --no-such-option=1"},
    {{"--http.port"}, "--http.port needs a value"},
    {{"--scheduler.policy=bogus"}, "--scheduler.policy bogus"},
    {{"--storage.idempotency-retention-s=1"}, "--storage.idempotency-retention-s 1"},
    {{"--storage.idempotency-retention-s=86399"}, "--storage.idempotency-retention-s 86399"},
    // Numbers outside what works: each would have started a broken server.
    {{"--http.request-timeout-ms=0"}, "--http.request-timeout-ms 0"},
    {{"--http.read-timeout-ms=0"}, "--http.read-timeout-ms 0"},
    {{"--http.sse-heartbeat-ms=0"}, "--http.sse-heartbeat-ms 0"},
    {{"--http.sse-max-lag=0"}, "--http.sse-max-lag 0"},
    {{"--http.sse-catch-up-slots=2000000"}, "--http.sse-catch-up-slots 2000000"},
    {{"--scheduler.max-threads=0"}, "--scheduler.max-threads"},
    {{"--storage.idempotency-retention-s=10000000000000000"},
     "--storage.idempotency-retention-s 10000000000000000"},
    {{"--projection.batch-wait-us=99999999999"}, "--projection.batch-wait-us 99999999999"},
    // The request deadline would answer 503 for writes the unit-of-work wait
    // would answer 202 (appended, but the client told "may or may not").
    {{"--projection.mode=unit-of-work", "--http.request-timeout-ms=3000"},
     "--http.request-timeout-ms 3000"},
  };
  for (auto& c : cases) {
    std::vector<std::string> args{bin, "--storage.dir=" + dir, "--postgres.dsn=" + unreachable_dsn};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = run_command(args, {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
    INFO(c.args.front() << " -> exit " << r.exit_code() << ": " << r.output);
    CHECK_FALSE(r.timed_out);
    check_refused(r, c.names);
    CHECK(r.output.rfind("eventsd: ", 0) == 0);
    CHECK(r.output.find("parser_error") == std::string::npos); // words, not CAF's tuples
    CHECK(r.output.find("secret") == std::string::npos);
    CHECK(r.output.find("cret") == std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir));
  }
  // No DSN anywhere (command line or EVENTSD_POSTGRES_DSN) is a bad configuration too.
  auto r = run_command({bin, "--storage.dir=" + dir, "--http.port=0"},
                       {.timeout = 20s,
                        .cwd = d.path(),
                        .unset_env = {"EVENTSD_POSTGRES_DSN"},
                        .stop_at = "listening on"});
  INFO("no DSN -> exit " << r.exit_code() << ": " << r.output);
  check_refused(r, "postgres.dsn");
  CHECK_FALSE(std::filesystem::exists(dir));
}

TEST_CASE("without openapi.json eventsd refuses a --http.static-dir named for it (exit 2) and "
          "warns when its own static directory is missing",
          "[e2e][faults][startup]") {
  temp_dir d{"eventsd-faults-static-"};
  auto dir = d.path() + "/data";
  auto empty = d.path() + "/empty";
  std::filesystem::create_directories(empty);
  auto r = run_command({eventsd_binary(), "--storage.dir=" + dir, "--http.port=0",
                        "--postgres.dsn=" + unreachable_dsn, "--http.static-dir=" + empty},
                       {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  INFO(r.output);
  check_refused(r, "--http.static-dir " + empty + " holds no openapi.json");
  CHECK_FALSE(std::filesystem::exists(dir));
  // The binary copied alone: it serves, and says what it cannot.
  auto alone = d.path() + "/eventsd";
  std::filesystem::copy_file(eventsd_binary(), alone);
  auto warned = run_command({alone, "--storage.dir=" + dir, "--http.port=0",
                             "--postgres.dsn=" + unreachable_dsn},
                            {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  INFO(warned.output);
  CHECK(warned.output.find("listening on") != std::string::npos);
  CHECK(warned.output.find("eventsd: WARNING no openapi.json in " + d.path() + "/static")
        != std::string::npos);
}

TEST_CASE("--help lists eventsd's own options with their defaults and exits 0, before any "
          "configuration check",
          "[e2e][faults][startup]") {
  auto bin = eventsd_binary();
  temp_dir d{"eventsd-faults-help-"};
  for (auto flag : {"--help", "-h", "--long-help"}) {
    // No DSN anywhere: help needs none.
    auto r = run_command({bin, flag},
                         {.timeout = 20s, .cwd = d.path(), .unset_env = {"EVENTSD_POSTGRES_DSN"}});
    INFO(flag << " -> exit " << r.exit_code() << ": " << r.output.substr(0, 400));
    CHECK(r.exit_code() == 0);
    CHECK(r.output.rfind("usage: eventsd", 0) == 0);
    for (auto option : {"--http.drain-timeout-ms", "--postgres.query-timeout-ms",
                        "--storage.sync", "--projection.mode", "--actors.max-live", "--rebuild"})
      CHECK(r.output.find(option) != std::string::npos);
    CHECK(r.output.find("middleman") == std::string::npos); // CAF's own options are not ours
    CHECK(r.output.find("config/eventsd.conf") != std::string::npos);
  }
  CHECK(std::filesystem::is_empty(d.path()));
}

TEST_CASE("a bad value in the config file stops eventsd with exit code 2 and a one-line reason",
          "[e2e][faults][startup]") {
  auto bin = eventsd_binary();
  temp_dir d{"eventsd-faults-config-"};
  auto dir = d.path() + "/data";
  auto conf = d.path() + "/bad.conf";
  for (std::string body :
       {"[http]\nthreads=\"many\"\n", "[projection]\nbatch-size=-3\n",
        "[http]\nprot=9000\n" /* a misspelt option */, "[htp]\nport=9000\n" /* section */,
        "[http]\nread-timeout-ms=0\n", "[projection]\nmode=eventual\n" /* no quotes */}) {
    {
      std::ofstream out{conf};
      out << body;
    }
    auto r = run_command({bin, "--config-file=" + conf, "--storage.dir=" + dir, "--http.port=0",
                          "--postgres.dsn=" + unreachable_dsn},
                         {.timeout = 10s, .cwd = d.path(), .stop_at = "listening on"});
    INFO("config file:\n" << body << "-> exit " << r.exit_code() << (r.timed_out ? " (killed: it started serving)" : "")
                          << ": " << r.output);
    CHECK_FALSE(r.timed_out);
    check_refused(r, conf);
    CHECK(r.output.find("parser_error") == std::string::npos);
  }
  // A config file named on the command line must be one.
  for (auto named : {d.path(), d.path() + "/missing.conf"}) {
    auto r = run_command({bin, "--config-file=" + named, "--storage.dir=" + dir, "--http.port=0",
                          "--postgres.dsn=" + unreachable_dsn},
                         {.timeout = 10s, .cwd = d.path(), .stop_at = "listening on"});
    INFO(named << " -> exit " << r.exit_code() << ": " << r.output);
    check_refused(r, named);
  }
}

TEST_CASE("--config-file=/dev/null reads no config file, not even the working directory's "
          "config/eventsd.conf",
          "[e2e][faults][startup]") {
  temp_dir d{"eventsd-faults-no-config-"};
  auto dir = d.path() + "/data";
  std::filesystem::create_directories(d.path() + "/config");
  {
    std::ofstream out{d.path() + "/config/eventsd.conf"};
    out << "[http]\nthreads=\"many\"\n"; // refused, were it read
  }
  auto args = [&](std::vector<std::string> extra) {
    std::vector<std::string> a{eventsd_binary(), "--storage.dir=" + dir, "--http.port=0",
                               "--postgres.dsn=" + unreachable_dsn};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  auto read = run_command(args({}), {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  INFO("without --config-file: " << read.output);
  check_refused(read, "config/eventsd.conf");
  auto none = run_command(args({"--config-file=/dev/null"}),
                          {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  INFO("with --config-file=/dev/null: " << none.output);
  CHECK(none.output.find("listening on") != std::string::npos);
}

TEST_CASE("every option can come from EVENTSD_<GROUP>_<NAME> when the command line leaves it "
          "out; a bad value there stops eventsd with exit code 2 naming the variable",
          "[e2e][faults][startup]") {
  auto bin = eventsd_binary();
  temp_dir d{"eventsd-faults-env-"};
  auto dir = d.path() + "/data";
  struct scoped_env {
    std::string name;
    scoped_env(std::string n, const std::string& value) : name(std::move(n)) {
      ::setenv(name.c_str(), value.c_str(), 1);
    }
    ~scoped_env() { ::unsetenv(name.c_str()); }
  };
  auto run = [&](std::vector<std::string> extra, bool dsn_on_command_line = true) {
    std::vector<std::string> args{bin, "--storage.dir=" + dir};
    if (dsn_on_command_line)
      args.push_back("--postgres.dsn=" + unreachable_dsn);
    args.insert(args.end(), extra.begin(), extra.end());
    return run_command(args, {.timeout = 20s, .cwd = d.path(), .stop_at = "listening on"});
  };
  struct refused {
    std::string variable, value, says;
  };
  for (auto& c : std::vector<refused>{
         {"EVENTSD_HTTP_THREADS", "0", "--http.threads 0 (EVENTSD_HTTP_THREADS)"},
         // `-` in an option's name is `_` in its variable's.
         {"EVENTSD_HTTP_READ_TIMEOUT_MS", "0",
          "--http.read-timeout-ms 0 (EVENTSD_HTTP_READ_TIMEOUT_MS)"},
         {"EVENTSD_HTTP_PORT", "eighty", "invalid EVENTSD_HTTP_PORT=eighty"},
         // A misspelt variable of one of eventsd's groups is refused, not ignored.
         {"EVENTSD_HTTP_PROT", "9000", "unknown variable EVENTSD_HTTP_PROT"},
         {"EVENTSD_HTTP_ADMIN_TOKEN", " ", "invalid EVENTSD_HTTP_ADMIN_TOKEN: needs a value"},
         // Not repeated (its password), from the environment either.
         {"EVENTSD_POSTGRES_DSN", "postgresql://u:secret@[::1/db",
          "invalid --postgres.dsn (from EVENTSD_POSTGRES_DSN)"},
       }) {
    scoped_env v{c.variable, c.value};
    auto r = run({}, c.variable != "EVENTSD_POSTGRES_DSN");
    INFO(c.variable << "=" << c.value << " -> exit " << r.exit_code() << ": " << r.output);
    check_refused(r, c.says);
    CHECK(r.output.find("secret") == std::string::npos);
  }
  {
    // The command line wins over the environment.
    scoped_env port{"EVENTSD_HTTP_PORT", "eighty"};
    auto ok = run({"--http.port=0"});
    INFO("exit " << ok.exit_code() << ": " << ok.output);
    CHECK(ok.output.find("listening on") != std::string::npos);
  }
  {
    // A free port, taken from the environment; `-` in a name is `_`.
    auto port = std::to_string(free_port());
    scoped_env p{"EVENTSD_HTTP_PORT", port};
    scoped_env mode{"EVENTSD_PROJECTION_MODE", "on-demand"};
    // ...over the config file's.
    auto conf = d.path() + "/scheduled.conf";
    std::ofstream{conf} << "[projection]\nmode=\"scheduled\"\n";
    auto r = run({"--config-file=" + conf});
    INFO("exit " << r.exit_code() << ": " << r.output);
    CHECK(r.output.find("listening on http://127.0.0.1:" + port + " (mode on-demand")
          != std::string::npos);
  }
  {
    // An empty variable counts as unset: the default applies; and an empty
    // one of an unknown name is not refused.
    scoped_env mode{"EVENTSD_PROJECTION_MODE", ""};
    scoped_env misspelt{"EVENTSD_HTTP_PROT", ""};
    auto r = run({"--http.port=0"});
    INFO("exit " << r.exit_code() << ": " << r.output);
    CHECK(r.output.find("(mode eventual") != std::string::npos);
  }
  CHECK(std::filesystem::exists(dir)); // the last runs started
}

TEST_CASE("an exception that ends the log writer stops the server: the write it held is "
          "answered 503 and not appended, the reason is logged, and eventsd exits with status 70",
          "[e2e][faults][lifeline]") {
  // The failpoint makes the log writer throw before it writes its first batch.
  std::unique_ptr<server> s;
  with_failpoints("log-writer.before-append",
                  [&] { s = std::make_unique<server>(server_options::without_postgres({})); });
  {
    http_client c{s->port()};
    auto r = c.post_json("/todo", {{"description", "held when the writer failed"}});
    INFO(r.status << " " << r.body);
    REQUIRE(is_problem(r, 503));
    // The writer's own answer, not the drain's "the server is stopping" for
    // a request nothing answered.
    CHECK(r.json_body().value("detail", std::string{})
          == "the server is stopping: the log writer stopped before writing this write; "
             "nothing was appended, retry");
  }
  auto status = s->wait_exit(20s);
  INFO(s->output());
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 70);
  CHECK(s->output().find("eventsd: the log writer stopped unexpectedly: exception: failpoint "
                         "log-writer.before-append; stopping")
        != std::string::npos);
  // Started again (the failpoint unarmed): the held write is not in the log,
  // and writes work.
  s->start();
  http_client c{s->port()};
  auto all = c.get("/streams/$all");
  REQUIRE(all.status == 200);
  CHECK(all.json_body()["items"].empty());
  CHECK(c.post_json("/todo", {{"description", "after the restart"}}).status == 201);
}

TEST_CASE("PostgreSQL stopped under a running server: writes go on, /readyz and read-model reads "
          "answer 503, the projection reconnects by itself within the capped backoff and the "
          "read model converges to the fold of the log",
          "[e2e][faults][postgres-down]") {
  private_cluster pg;
  server_options o;
  o.dsn = pg.dsn();
  o.args = {"--projection.mode=eventual"};
  server s{o};
  http_client c{s.port()};

  // A few todos through every kind of write, undo included.
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) {
    auto r = c.post_json("/todo", {{"description", "outage todo " + std::to_string(i)}});
    REQUIRE(r.status == 201);
    ids.push_back(ack_of(r).id);
  }
  size_t step = 0;
  auto write_one = [&]() -> response {
    auto& id = ids[step % ids.size()];
    auto kind = (step / ids.size()) % 5;
    ++step;
    switch (kind) {
      case 0:
        return c.put_json("/todo/change-description",
                          {{"id", id}, {"description", "renamed " + std::to_string(step)}});
      case 1:
        return c.put("/todo/" + id + "/put-in-progress");
      case 2:
        return c.put("/todo/" + id + "/done");
      case 3: {
        auto h = c.get("/todo/" + id + "/history");
        auto first = h.json_body().at("items").at(0).at("id").get<std::string>();
        return c.put("/todo/" + id + "/undo-to/" + first);
      }
      default: {
        auto r = c.post_json("/todo", {{"description", "created " + std::to_string(step)}});
        if (r.status == 201)
          ids.push_back(ack_of(r).id);
        return r;
      }
    }
  };
  for (int i = 0; i < 30; ++i)
    REQUIRE(write_one().status / 100 == 2);
  uint64_t head = all_head(c);
  REQUIRE(c.get("/todo?minPosition=" + std::to_string(head) + "&waitMs=10000").status == 200);
  REQUIRE(c.get("/readyz").status == 200);

  pg.stop_immediately();
  auto stopped = clock_type::now();
  double errors_at_start = -1;
  bool saw_not_ready = false, checked_reads = false;
  std::vector<std::string> refused;
  size_t written = 0;
  // Long enough that an uncapped doubling backoff (100 ms, 200 ms, ...) would
  // next retry only about 12 s after PostgreSQL returns.
  while (clock_type::now() - stopped < 13s) {
    auto r = write_one();
    if (r.status / 100 != 2)
      refused.push_back(std::to_string(r.status) + " " + r.body.substr(0, 200));
    else
      ++written;
    if (!saw_not_ready) {
      auto ready = c.get("/readyz");
      if (ready.status == 503) {
        saw_not_ready = true;
        INFO("/readyz: " << ready.body);
        CHECK(is_problem(ready, 503));
        CHECK(ready.header("Retry-After") == "5");
        auto j = ready.json_body();
        CHECK(j.at("detail").get<std::string>().find("PostgreSQL") != std::string::npos);
        CHECK(j["checks"]["postgres"] == "unreachable");
        CHECK(j["checks"]["readModel"] == "unknown"); // not "ok": nobody can tell
        errors_at_start = metric(c, "eventsd_projection_errors_total");
      }
    } else if (!checked_reads) {
      checked_reads = true;
      auto one = c.get("/todo/" + ids.front());
      INFO("GET /todo/{id}: " << one.status << " " << one.body);
      CHECK(is_problem(one, 503));
      CHECK(one.header("Retry-After"));
      auto list = c.get("/todo");
      INFO("GET /todo: " << list.status << " " << list.body);
      CHECK(is_problem(list, 503));
      auto waited = c.get("/todo/" + ids.front() + "?minPosition=" + std::to_string(all_head(c, head))
                          + "&waitMs=300");
      INFO("GET /todo/{id}?minPosition: " << waited.status << " " << waited.body);
      CHECK(is_problem(waited, 503));
      CHECK(waited.header("Retry-After"));
      CHECK(c.get("/todo/" + ids.front() + "/history").status == 200);
      CHECK(c.get("/healthz").status == 200);
    }
    sleep_for(40ms);
  }
  INFO("refused writes: " << (refused.empty() ? std::string{"none"} : refused.front()));
  CHECK(refused.empty());
  CHECK(written > 50);
  CHECK(saw_not_ready);
  CHECK(checked_reads);
  // Backoff, not a hot loop: a doubling backoff from 100 ms capped at 5 s fails
  // about 8 times in 13 s.
  double errors_during = metric(c, "eventsd_projection_errors_total") - errors_at_start;
  INFO("projection errors during the outage: " << errors_during);
  CHECK(errors_at_start >= 0);
  CHECK(errors_during <= 15);

  uint64_t final_head = all_head(c, head);
  pg.start();
  auto restarted = clock_type::now();
  // By itself: watch /metrics only (/readyz and /admin/projections make the
  // projection probe PostgreSQL, which would reconnect it for us).
  bool caught_up = eventually(
    [&] { return metric(c, "eventsd_projection_position") >= static_cast<double>(final_head); },
    15000ms, 50ms);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - restarted);
  INFO("the projection caught up " << took.count() << " ms after PostgreSQL returned");
  REQUIRE(caught_up);
  CHECK(took < 9500ms); // the 5 s cap plus slack; uncapped doubling would take ~12 s
  CHECK(c.get("/readyz").status == 200);
  // The operator reads it in the log: once when it began, once when it ended
  // (not once per retry).
  auto log = s.output();
  INFO("server output:\n" << log);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1))
      ++n;
    return n;
  };
  CHECK(count("read model not updated") >= 1);
  CHECK(count("read model not updated") <= 3);
  CHECK(count("read model reachable again") >= 1);

  // Reader connections that died in the outage fail their first query once
  // each (the bug of the test below, since fixed); use every reader once first.
  size_t stale = 0;
  for (int i = 0; i < 8; ++i) {
    auto r = c.get("/todo/" + ids.front());
    if (r.status == 503)
      ++stale;
    else
      CHECK(r.status == 200);
  }
  CHECK(stale <= 2); // --postgres.readers defaults to 2

  check_read_model_is_fold_of_log(c);
  // And by the other way the brief asks for: each todo's read-model row is the
  // last snapshot of its own history.
  uint64_t last = all_head(c, head);
  auto listed = list_read_model(c, last);
  size_t mismatches = 0;
  for (auto& id : ids) {
    auto h = c.get("/todo/" + id + "/history");
    REQUIRE(h.status == 200);
    auto snap = h.json_body().at("items").back().at("snapshot");
    auto i = listed.find(id);
    if (i == listed.end() || i->second != snap) {
      if (++mismatches <= 3)
        UNSCOPED_INFO("history ends in " << snap.dump() << ", read model has "
                                          << (i == listed.end() ? "nothing" : i->second.dump()));
    }
  }
  CHECK(mismatches == 0);
  // Writes after the outage are projected as usual.
  auto after = c.put("/todo/" + ids.front() + "/done");
  REQUIRE(after.status == 200);
  auto seen = c.get("/todo/" + ids.front() + "?minPosition=" + std::to_string(ack_of(after).position));
  CHECK(seen.status == 200);
}

TEST_CASE("after a PostgreSQL restart the first read-model reads answer 200: reader "
          "connections that died in the outage are replaced, not reported",
          "[e2e][faults][postgres-down]") {
  private_cluster pg;
  server_options o;
  o.dsn = pg.dsn();
  server s{o};
  http_client c{s.port()};
  auto created = c.post_json("/todo", {{"description", "read after the outage"}});
  REQUIRE(created.status == 201);
  auto a = ack_of(created);
  // Every reader (4 by default, used round-robin) opens its connection.
  for (int i = 0; i < 8; ++i)
    REQUIRE(c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)).status == 200);

  pg.stop_immediately();
  sleep_for(300ms);
  pg.start();
  // PostgreSQL is back before any read noticed it was gone.
  std::vector<std::string> answers;
  for (int i = 0; i < 8; ++i) {
    auto r = c.get("/todo/" + a.id);
    if (r.status != 200)
      answers.push_back(std::to_string(r.status) + " " + r.body.substr(0, 200));
  }
  INFO(answers.size() << " of 8 reads failed; first: " << (answers.empty() ? "" : answers.front()));
  CHECK(answers.empty());
  // However long it takes, the readers do come back.
  std::vector<unsigned> later;
  for (int i = 0; i < 20; ++i) {
    later.push_back(c.get("/todo/" + a.id).status);
    sleep_for(100ms);
  }
  std::string seq;
  for (auto st : later)
    seq += std::to_string(st) + " ";
  INFO("the next 20 reads, 100 ms apart: " << seq);
  CHECK(later.back() == 200);
}

TEST_CASE("SIGKILL while the projection catches up a 20 000-event backlog: after a restart the "
          "read model equals the fold of the log, nothing skipped or applied twice",
          "[e2e][faults][crash][postgres-down]") {
  // The read model's database is cut off by PostgreSQL itself (connections
  // refused and terminated), not by the harness's tcp_proxy: that proxy can
  // block for good on a connection accepted in the same poll round (see the
  // report), which made this test hang ~50 s and fail in about half the runs.
  test_database db;
  read_model_switch outage{db.name()};
  server_options o;
  o.dsn = db.dsn() + " connect_timeout=10";
  // Small batches: many transactions to be killed between (or inside).
  o.args = {"--projection.mode=eventual", "--projection.batch-size=100"};
  server s{o};
  http_client c{s.port()};
  auto first = c.post_json("/todo", {{"description", "before the backlog"}});
  REQUIRE(first.status == 201);
  REQUIRE(c.get("/todo/" + ack_of(first).id + "?minPosition=1").status == 200);

  outage.cut();
  size_t failures = 0;
  std::vector<std::string> samples;
  failures = write_events(s.port(), 20000, 12, samples);
  INFO("failed writes: " << failures << (samples.empty() ? "" : ": " + samples.front()));
  REQUIRE(failures == 0);
  uint64_t head = all_head(c);
  REQUIRE(head >= 20000);
  auto before = projection_status(c);
  INFO("projection while cut off: " << before.dump());
  REQUIRE(before.at("position").get<uint64_t>() < 100);

  outage.restore();
  // Kill once about a quarter of the backlog is applied.
  uint64_t observed = 0;
  json last_status;
  bool killed = eventually(
    [&] {
      last_status = projection_status(c);
      observed = last_status.at("position").get<uint64_t>();
      if (observed >= head / 4 && observed < head) {
        s.kill();
        return true;
      }
      return observed >= head; // too late: fails below
    },
    15000ms, 2ms);
  INFO("last status before the kill: " << last_status.dump());
  REQUIRE(killed);
  REQUIRE(observed < head); // killed in the middle of the catch-up

  s.start();
  http_client c2{s.port()};
  auto resumed = projection_status(c2);
  INFO("after the restart: " << resumed.dump());
  // It resumes from its checkpoint, not from the start of the log.
  CHECK(resumed.at("position").get<uint64_t>() >= observed);
  check_read_model_is_fold_of_log(c2);
  // Batches after the restart cover only the rest of the log.
  double batches = metric(c2, "eventsd_projection_batches_total");
  INFO("batches after the restart: " << batches);
  CHECK(batches <= static_cast<double>(head - observed) / 100.0 + 5);
}

TEST_CASE("a request the server cannot answer within --http.request-timeout-ms gets a 503 "
          "problem, and the connection serves the next request",
          "[e2e][faults][deadline]") {
  // A read that waits for a position the log will never reach in time: the
  // projection would answer after waitMs (30 s); the session's deadline
  // answers first.
  server s{server_options::with_args({"--http.request-timeout-ms=500"})};
  http_client c{s.port()};
  auto t0 = std::chrono::steady_clock::now();
  auto r = c.get("/todo?minPosition=1000000000&waitMs=30000");
  auto took = std::chrono::steady_clock::now() - t0;
  INFO("answer " << r.status << " after "
                 << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                 << " ms: " << r.body);
  REQUIRE(r.status == 503);
  CHECK(r.header("Content-Type").value_or("").rfind("application/problem+json", 0) == 0);
  CHECK(r.header("Retry-After").has_value());
  CHECK(r.json_body()["detail"].get<std::string>().find("request timeout") != std::string::npos);
  // A read says nothing about writes that may or may not have happened.
  CHECK(r.json_body()["detail"].get<std::string>().find("write") == std::string::npos);
  CHECK(took >= std::chrono::milliseconds{450});
  CHECK(took < std::chrono::seconds{10});
  // Same connection: the late answer of the first request does not leak into this one.
  auto created = c.post_json("/todo", {{"description", "after a deadline"}});
  CHECK(created.status == 201);
  CHECK(c.get("/healthz").status == 200);
  CHECK(c.connections() == 1);
}

/// Stops `s`, seeds its empty store with one todo of `events` events and no
/// snapshot (the bench's bulk seeder, EVENTSD_SEED_LOG), starts it again and
/// returns the todo's id. With --actors.snapshot-every=0 its first command
/// waits for all of them to be replayed.
std::string seed_long_todo(server& s, uint64_t events) {
  const char* seeder = std::getenv("EVENTSD_SEED_LOG");
  REQUIRE(seeder != nullptr);
  s.stop();
  temp_dir lists;
  auto seeded = run_command({seeder, "--dir=" + s.storage_dir(), "--work=0", "--history=0",
                             "--long=" + std::to_string(events), "--long-count=0",
                             "--long-raw-count=1", "--out=" + lists.path() + "/seed"},
                            {.timeout = 120s, .cwd = "/"});
  INFO(seeded.output);
  REQUIRE(seeded.exit_code() == 0);
  std::ifstream long_list{lists.path() + "/seed.long"};
  std::string id;
  REQUIRE(long_list >> id);
  s.start();
  return id;
}

TEST_CASE("a write answered 503 for the request timeout is not appended: a command queued "
          "behind a slow activation past its deadline is refused unwritten",
          "[e2e][faults][deadline]") {
  // A todo of 800 000 events and no snapshot: activating it replays them all,
  // for much longer than the shortest request timeout (100 ms; ≈ 0.7 s here).
  constexpr uint64_t events = 800'000;
  server s{server_options::with_args({"--http.request-timeout-ms=100",
                                      "--actors.snapshot-every=0"})};
  auto id = seed_long_todo(s, events);
  http_client c{s.port()};

  // Each write waits for the activation, the first one longest; every 503
  // among them must have appended nothing, so the first that succeeds is
  // version events + 1.
  std::vector<std::string> refusals;
  response r;
  for (int attempt = 0; attempt < 50; ++attempt) {
    r = c.put_json("/todo/change-description",
                   {{"id", id}, {"description", "attempt " + std::to_string(attempt)}});
    if (r.status != 503)
      break;
    CHECK(r.header("Retry-After").has_value());
    refusals.push_back(r.json_body()["detail"].get<std::string>());
  }
  INFO("503 answers: " << refusals.size());
  for (auto& why : refusals)
    INFO(why);
  REQUIRE(r.status == 200);
  CHECK_FALSE(refusals.empty()); // the activation did outlast the first request
  CHECK(r.json_body()["version"] == events + 1);
  auto tail = c.get("/streams/todo-" + id + "?from=" + std::to_string(events + 1)).json_body();
  REQUIRE(tail["items"].size() == 1);
  CHECK(tail["items"][0]["data"]["description"]
        == "attempt " + std::to_string(refusals.size()));
}

namespace {

/// PIDs of the sessions of `dsn`'s cluster named `application_name`.
std::vector<pid_t> backends_named(const std::string& dsn, const std::string& application_name) {
  PGconn* c = PQconnectdb(dsn.c_str());
  std::vector<pid_t> out;
  if (PQstatus(c) == CONNECTION_OK) {
    const char* ps[] = {application_name.c_str()};
    PGresult* r = PQexecParams(c, "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                               1, nullptr, ps, nullptr, nullptr, 0);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); ++i)
      out.push_back(std::stoi(PQgetvalue(r, i, 0)));
    PQclear(r);
  }
  PQfinish(c);
  return out;
}

/// Stops processes with SIGSTOP (a hung PostgreSQL backend, or a network path
/// that stopped forwarding) and lets them go on at destruction.
struct frozen {
  std::vector<pid_t> pids;
  explicit frozen(std::vector<pid_t> p) : pids(std::move(p)) {
    for (auto pid : pids)
      REQUIRE(::kill(pid, SIGSTOP) == 0);
  }
  ~frozen() {
    for (auto pid : pids)
      ::kill(pid, SIGCONT);
  }
  frozen(const frozen&) = delete;
  frozen& operator=(const frozen&) = delete;
};

} // namespace

TEST_CASE("a PostgreSQL session that stops answering holds the projection and the readers for "
          "--postgres.query-timeout-ms only: they reconnect and the read model catches up",
          "[e2e][faults][postgres-down]") {
  private_cluster pg;
  server_options o;
  o.dsn = pg.dsn();
  o.args = {"--postgres.query-timeout-ms=500", "--postgres.readers=1"};
  server s{o};
  http_client c{s.port()};
  auto first = ack_of(c.post_json("/todo", {{"description", "before the stall"}}));
  REQUIRE(c.get("/todo/" + first.id + "?minPosition=" + std::to_string(first.position)).status
          == 200);
  auto projection = backends_named(pg.dsn(), "eventsd projection");
  auto readers = backends_named(pg.dsn(), "eventsd reader");
  REQUIRE(projection.size() == 1);
  REQUIRE(readers.size() == 1);
  double errors_before = metric(c, "eventsd_projection_errors_total");

  frozen stalled{{projection.front(), readers.front()}};
  // The frozen reader answers nothing: the reader gives up on it after the
  // timeout and asks once more on a new session (as after any lost connection).
  auto t0 = clock_type::now();
  auto slow = c.get("/todo/" + first.id);
  auto took = clock_type::now() - t0;
  INFO("first read: " << slow.status << " " << slow.body);
  CHECK(slow.status == 200);
  CHECK(took >= 450ms);
  CHECK(took < 5s);
  CHECK(backends_named(pg.dsn(), "eventsd reader").size() == 2);

  // Writes never wait for PostgreSQL; the projection gives up on its frozen
  // session and applies them on a new one.
  auto w = c.post_json("/todo", {{"description", "during the stall"}});
  REQUIRE(w.status == 201);
  auto second = ack_of(w);
  t0 = clock_type::now();
  auto seen = c.get("/todo/" + second.id + "?minPosition=" + std::to_string(second.position)
                    + "&waitMs=10000");
  took = clock_type::now() - t0;
  INFO("read of the write after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                  << " ms: " << seen.status << " " << seen.body);
  CHECK(seen.status == 200);
  CHECK(seen.json_body().value("description", "") == "during the stall");
  CHECK(took < 5s);
  CHECK(metric(c, "eventsd_projection_errors_total") > errors_before);
  // The frozen sessions are still there, stopped; two new ones took over.
  CHECK(backends_named(pg.dsn(), "eventsd projection").size() == 2);
  CHECK(c.get("/readyz").status == 200);
}

TEST_CASE("a client too slow to send its request within --http.read-timeout-ms gets a 408 "
          "problem and a closed connection; an idle keep-alive connection is just closed",
          "[e2e][faults][slow-client]") {
  server s{server_options::with_args({"--http.read-timeout-ms=500"})};
  auto head = [&] {
    http_client c{s.port()};
    return all_head(c, 0);
  };
  auto before = head();
  auto check_408 = [&](const std::string& partial) {
    auto t0 = clock_type::now();
    auto raw = raw_exchange(s.port(), partial, 5000ms);
    auto took = clock_type::now() - t0;
    INFO("sent " << partial.size() << " bytes, got: " << raw.substr(0, 300));
    auto r = parse_response(raw);
    CHECK(is_problem(r, 408));
    CHECK(r.header("Connection").value_or("") == "close");
    CHECK(took >= 400ms);
    CHECK(took < 3s);
  };
  check_408("GET /todo HT");                                            // inside the request line
  check_408("GET /todo HTTP/1.1\r\nHost: x\r\nX-Slow: 1");               // inside the header
  check_408("POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 40\r\n\r\n{\"description\":");               // inside the body
  CHECK(head() == before);
  // The 408 of a HEAD whose body is late has no body (RFC 9110 §9.3.2).
  auto head_408 = raw_exchange(
    s.port(), "HEAD /todo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{", 5000ms);
  INFO("answer to the HEAD: " << head_408);
  CHECK(head_408.rfind("HTTP/1.1 408 ", 0) == 0);
  CHECK(head_408.size() == head_408.find("\r\n\r\n") + 4);

  // A connection that sends nothing is closed without an answer.
  auto t0 = clock_type::now();
  auto idle = raw_exchange(s.port(), "", 5000ms);
  CHECK(idle.empty());
  CHECK(clock_type::now() - t0 < 3s);

  // A keep-alive client that pauses between requests (less than the timeout) is served.
  http_client c{s.port()};
  for (int i = 0; i < 3; ++i) {
    CHECK(c.get("/healthz").status == 200);
    sleep_for(200ms);
  }
  CHECK(c.connections() == 1);
}

namespace {

/// What a client that keeps sending a request's body gets back: sends
/// `header`, then `piece` after `piece` (a millisecond apart, or as fast as
/// the socket takes them) while reading, until an answer is complete or
/// `limit` passes. `answered_after` is when the answer was complete.
struct streamed_answer {
  std::string raw;
  std::chrono::milliseconds answered_after{-1};
};

streamed_answer send_body_until_answered(uint16_t port, const std::string& header,
                                         const std::string& piece,
                                         std::chrono::milliseconds limit, bool paced = true) {
  streamed_answer out;
  int fd = connect_loopback(port);
  auto t0 = clock_type::now();
  bool sending = ::send(fd, header.data(), header.size(), MSG_NOSIGNAL) > 0;
  size_t sent = 0; // of the current piece
  char buf[16384];
  while (clock_type::now() - t0 < limit) {
    if (sending) {
      auto w = ::send(fd, piece.data() + sent, piece.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0)
        sent = (sent + static_cast<size_t>(w)) % piece.size();
      else if (errno != EAGAIN)
        sending = false; // closed by the server: read what it said
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, paced ? 1 : 0) > 0) {
      auto r = ::recv(fd, buf, sizeof buf, 0);
      if (r <= 0)
        break;
      out.raw.append(buf, static_cast<size_t>(r));
      if (out.raw.find("\r\n\r\n") != std::string::npos && out.raw.find("}") != std::string::npos) {
        out.answered_after =
          std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0);
        break;
      }
    }
  }
  ::close(fd);
  return out;
}

} // namespace

TEST_CASE("a client that keeps sending its body past --http.read-timeout-ms gets its 408 at the "
          "deadline, however its bytes fall around it",
          "[e2e][faults][slow-client]") {
  // A read that completed just as the deadline fired used to escape its
  // cancel, and the connection then read on with no deadline at all, for as
  // long as the client sent: here until the body limit's 413, 64 Ki chunks
  // later (each with a 1 KiB extension, so that it takes a while).
  server s{server_options::with_args({"--http.read-timeout-ms=300"})};
  const std::string header = "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n";
  const std::string chunk = "1;x=" + std::string(15000, 'x') + "\r\n \r\n";
  std::vector<streamed_answer> answers(8);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < answers.size(); ++i)
    clients.emplace_back([&, i] {
      // Half of them trickle (a chunk a millisecond), half send flat out.
      answers[i] = send_body_until_answered(s.port(), header, chunk, 10000ms, i % 2 == 0);
    });
  for (auto& t : clients)
    t.join();
  for (auto& a : answers) {
    INFO("answered after " << a.answered_after.count() << " ms: " << a.raw.substr(0, 600));
    REQUIRE(a.answered_after.count() >= 0);
    CHECK(a.raw.rfind("HTTP/1.1 408 ", 0) == 0);
    CHECK(a.answered_after < 1500ms);
  }
}

TEST_CASE("a chunked body whose size line or trailer section does not end within 16 KiB is a "
          "400 and the connection closes, rather than a buffer that grows while the client sends; "
          "the same when it arrives at once",
          "[e2e][faults][limits]") {
  server s;
  http_client c{s.port()};
  auto before = all_head(c, 0);
  const std::string header = "POST /todo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n";
  struct endless {
    const char* what;
    std::string start, piece;
  };
  for (auto& e : std::vector<endless>{
         {"a chunk extension that never ends", "1;ext=", std::string(1024, 'a')},
         {"a trailer section that never ends", "0\r\n", "X-Trailer: " + std::string(1000, 'b') + "\r\n"},
       }) {
    CAPTURE(e.what);
    auto a = send_body_until_answered(s.port(), header + e.start, e.piece, 10000ms);
    INFO("answered after " << a.answered_after.count() << " ms: " << a.raw.substr(0, 300));
    REQUIRE(a.answered_after.count() >= 0);
    auto r = parse_response(a.raw);
    CHECK(r.status == 400);
    CHECK(r.header("Connection") == "close");
    CHECK(r.json_body().value("detail", "").find("does not end within 16384 bytes") != std::string::npos);
    CHECK(a.answered_after < 3000ms); // not the 30 s read timeout
  }
  // The same limit when the whole request arrives at once (the parser could
  // take a complete long line in one go): a size line or trailer section of
  // more than 16 KiB is refused, one within it is read.
  const std::string body = R"({"description":"chunked, sent at once"})";
  auto size_line = [&](const std::string& extension) {
    std::ostringstream hex;
    hex << std::hex << body.size();
    return hex.str() + extension + "\r\n" + body + "\r\n";
  };
  auto trailer = [](size_t value_size) {
    return "X-Trailer: " + std::string(value_size, 't') + "\r\n";
  };
  struct whole {
    const char* what;
    std::string chunks;
    unsigned status;
  };
  for (auto& w : std::vector<whole>{
         {"a chunk extension of 17 000 bytes", size_line(";e=" + std::string(17000, 'x')) + "0\r\n\r\n", 400},
         {"a trailer section of 17 000 bytes", size_line("") + "0\r\n" + trailer(17000) + "\r\n", 400},
         {"a chunk extension of 16 000 bytes", size_line(";e=" + std::string(16000, 'x')) + "0\r\n\r\n", 201},
         {"a trailer section of 16 000 bytes", size_line("") + "0\r\n" + trailer(16000) + "\r\n", 201},
         // Chunk data after the long line holds line feeds: still the long line's 400.
         {"a chunk extension of 17 000 bytes, then chunk data with line feeds",
          size_line(";e=" + std::string(17000, 'x')) + "3\r\n\n\n\n\r\n0\r\n\r\n", 400},
       }) {
    CAPTURE(w.what);
    auto r = parse_response(raw_exchange(s.port(), header + w.chunks));
    CHECK(r.status == w.status);
    if (w.status == 400)
      CHECK(r.json_body().value("detail", "").find("does not end within 16384 bytes")
            != std::string::npos);
  }
  CHECK(all_head(c, 0) == before + 2);
  CHECK(c.get("/healthz").status == 200);
}

TEST_CASE("a request that comes on an idle keep-alive connection while the drain waits for "
          "another is served and closes its connection; both are in the log",
          "[e2e][faults][shutdown]") {
  // The write in flight: a command on a todo whose activation replays
  // 400 000 events, so the drain lasts that long (under the sanitizers on a
  // slow machine, longer than the default 5 s drain: it may take 30).
  server s{server_options::with_args({"--actors.snapshot-every=0", "--http.drain-timeout-ms=30000"})};
  auto id = seed_long_todo(s, 400'000);
  http_client idle{s.port()};
  REQUIRE(idle.get("/healthz").status == 200);

  std::optional<response> in_flight;
  std::string writer_error;
  std::thread writer{[&] {
    try {
      http_client c{s.port()};
      in_flight = c.put_json("/todo/change-description", {{"id", id}, {"description", "in flight"}});
    } catch (const std::exception& e) {
      writer_error = e.what();
    }
  }};
  std::this_thread::sleep_for(50ms); // the write is read, its activation runs
  std::thread stopper{[&] { s.stop(1, 60s); }};
  std::this_thread::sleep_for(50ms); // SIGTERM is in
  auto late = idle.post_json("/todo", {{"description", "after the drain began"}});
  stopper.join();
  writer.join();

  INFO("late request: " << late.status << " " << late.body);
  CHECK(late.status == 201);
  CHECK(late.header("Connection").value_or("") == "close");
  INFO("request in flight failed: " << writer_error);
  REQUIRE(in_flight);
  INFO("request in flight: " << in_flight->status << " " << in_flight->body);
  CHECK(in_flight->status == 200);

  s.start();
  http_client c{s.port()};
  // The seeded events, then the two writes.
  auto tail = read_all(c, 400'001);
  REQUIRE(tail.size() == 2);
  std::set<std::string> written{tail[0]["data"]["description"], tail[1]["data"]["description"]};
  CHECK(written == std::set<std::string>{"in flight", "after the drain began"});
}

namespace {

/// Sets an environment variable for the processes started while it lives
/// (the server inherits it), then restores what was there.
class env_for_children {
public:
  env_for_children(std::string name, const std::string& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str()))
      old_ = old;
    ::setenv(name_.c_str(), value.c_str(), 1);
  }
  ~env_for_children() {
    if (old_)
      ::setenv(name_.c_str(), old_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  env_for_children(const env_for_children&) = delete;
  env_for_children& operator=(const env_for_children&) = delete;

private:
  std::string name_;
  std::optional<std::string> old_;
};

/// eventsd with tests/e2e/sync_gate.cpp preloaded, with the two files that
/// steer it in a directory of its own: while `gate` exists its fdatasync and
/// fsync calls wait, while `fail` exists they fail (EIO).
struct gated_server {
  temp_dir dir{"eventsd-sync-gate-"};
  std::string gate = dir.path() + "/closed";
  std::string fail = dir.path() + "/fail";
  std::unique_ptr<server> s;

  explicit gated_server(const std::vector<std::string>& args)
    : gated_server(server_options::without_postgres(args)) {}

  explicit gated_server(server_options opts) {
    const char* shim = std::getenv("EVENTSD_SYNC_GATE_LIB");
    REQUIRE(shim != nullptr); // set by ctest (tests/e2e/faults_CMakeLists.txt)
    env_for_children preload{"LD_PRELOAD", shim};
    env_for_children where{"EVENTSD_TEST_SYNC_GATE", gate};
    env_for_children failing{"EVENTSD_TEST_SYNC_FAIL", fail};
    // The shim comes before the sanitizer's runtime in a sanitized build.
    std::string asan = std::getenv("ASAN_OPTIONS") ? std::getenv("ASAN_OPTIONS") : "";
    env_for_children order{"ASAN_OPTIONS",
                           asan + (asan.empty() ? "" : ":") + "verify_asan_link_order=0"};
    s = std::make_unique<server>(std::move(opts));
  }
};

/// A create sent with the sync gate closed (its fsync held back): open()
/// lets the disk go on, wait() takes its answer. The gate is opened and the
/// create waited for on destruction too, so a failed check leaves no thread.
class create_behind_gate {
public:
  create_behind_gate(std::string gate, uint16_t port, std::string description)
    : gate_(std::move(gate)) {
    std::ofstream{gate_} << "closed\n";
    thread_ = std::thread{[this, port, d = std::move(description)] {
      try {
        http_client wc{port};
        answer_ = wc.post_json("/todo", {{"description", d}});
      } catch (const std::exception&) {
        // no answer (status 0)
      }
      answered_ = true;
    }};
  }
  ~create_behind_gate() {
    open();
    wait();
  }
  create_behind_gate(const create_behind_gate&) = delete;
  create_behind_gate& operator=(const create_behind_gate&) = delete;

  /// True once a sync is held at the gate (the shim's `.held` file).
  bool held() {
    return eventually([&] { return std::filesystem::exists(gate_ + ".held"); }, 5000ms, 5ms);
  }
  bool answered() const { return answered_; }
  void open() { std::filesystem::remove(gate_); }
  const response& wait() {
    if (thread_.joinable())
      thread_.join();
    return answer_;
  }

private:
  std::string gate_;
  response answer_;
  std::atomic<bool> answered_{false};
  std::thread thread_;
};

/// What a create did while the server's fdatasync/fsync calls were held back
/// for one second, then let go.
struct held_sync_write {
  bool answered_while_held = false;
  response answer;
  uint64_t head_after = 0;
};

held_sync_write write_with_sync_held(const std::vector<std::string>& args) {
  gated_server g{args};
  auto& gate = g.gate;
  auto& s = g.s;
  http_client c{s->port()};
  // One write with the gate open: whatever the store syncs once is synced.
  REQUIRE(c.post_json("/todo", {{"description", "before the gate"}}).status == 201);

  held_sync_write w;
  create_behind_gate create{gate, s->port(), "written while the disk holds its sync"};
  std::this_thread::sleep_for(1000ms);
  w.answered_while_held = create.answered();
  create.open();
  w.answer = create.wait();
  w.head_after = all_head(c);
  return w;
}

} // namespace

TEST_CASE("a write is answered only after its fdatasync returns: while the disk holds the sync "
          "back the client waits, and gets its 201 once the sync completes",
          "[e2e][faults][durability][sync-gate]") {
  auto w = write_with_sync_held({});
  INFO(w.answer.status << " " << w.answer.body);
  CHECK_FALSE(w.answered_while_held);
  REQUIRE(w.answer.status == 201);
  CHECK(ack_of(w.answer).position == 2);
  CHECK(w.head_after == 2);
}

TEST_CASE("the durability check can tell: with --storage.sync=none (no fdatasync per write) the "
          "write is answered while the disk holds its syncs back",
          "[e2e][faults][durability][sync-gate]") {
  auto w = write_with_sync_held({"--storage.sync=none"});
  INFO(w.answer.status << " " << w.answer.body);
  CHECK(w.answered_while_held);
  CHECK(w.answer.status == 201);
  CHECK(w.head_after == 2);
}

TEST_CASE("on SIGTERM an SSE subscriber gets a last comment and is closed, a subscription asked "
          "during the drain is a 503 (also to a HEAD), and the write the drain waits for is "
          "answered",
          "[e2e][faults][drain][sse][sync-gate]") {
  gated_server g{{"--http.drain-timeout-ms=30000"}};
  auto& gate = g.gate;
  auto& s = g.s;
  http_client c{s->port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the drain"}}).status == 201);
  http_client h{s->port()}; // kept open for a HEAD during the drain
  REQUIRE(h.get("/healthz").status == 200);

  std::string stream;
  std::jthread subscriber{[&] { // joined however the test ends
    stream = raw_exchange(s->port(), "GET /subscribe/$all?from=1 HTTP/1.1\r\nHost: x\r\n\r\n",
                          30s, /*until_close=*/true);
  }};
  REQUIRE(eventually([&] { return metric(c, "eventsd_sse_subscribers") == 1; }, 5000ms, 20ms));

  // A write held in its fsync keeps the drain going.
  create_behind_gate create{gate, s->port(), "in flight at SIGTERM"};
  REQUIRE(create.held());
  s->signal(SIGTERM);

  subscriber.join();
  INFO("the subscription got:\n" << stream);
  CHECK(stream.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(stream.find("id: 1\n") != std::string::npos);
  auto last_word = std::string{": the server is stopping; reconnect with Last-Event-ID\n\n"};
  REQUIRE(stream.size() >= last_word.size());
  CHECK(stream.compare(stream.size() - last_word.size(), last_word.size(), last_word) == 0);

  // The connection c kept open is still served while the drain waits.
  auto refused = c.get("/subscribe/$all?from=1");
  INFO(refused.status << " " << refused.body);
  CHECK(refused.status == 503);
  CHECK(refused.header("Retry-After") == std::optional<std::string>{"1"});
  CHECK(refused.body.find("no new subscriptions") != std::string::npos);
  // A HEAD answers what a GET would.
  auto head = h.request("HEAD", "/subscribe/$all?from=1");
  CHECK(head.status == 503);
  CHECK(head.header("Retry-After") == std::optional<std::string>{"1"});

  create.open();
  auto& held = create.wait();
  INFO(held.status << " " << held.body);
  CHECK(held.status == 201);
  auto status = s->wait_exit(20s);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
}

TEST_CASE("a write whose fsync fails is answered 503 saying it may or may not have been appended; "
          "restarted, the log holds it once or not at all, and a retry with its Idempotency-Key "
          "answers accordingly",
          "[e2e][faults][durability][sync-gate]") {
  gated_server g{std::vector<std::string>{}};
  auto& fail = g.fail;
  auto& s = g.s;
  http_client c{s->port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the failing disk"}}).status == 201);

  std::ofstream{fail} << "EIO\n";
  json body{{"description", "its fsync failed"}};
  auto key = random_uuid();
  auto r = c.post_json("/todo", body, {{"Idempotency-Key", key}});
  INFO(r.status << " " << r.body);
  REQUIRE(r.status == 503);
  auto detail = r.json_body().value("detail", std::string{});
  CHECK(detail.find("may or may not have been appended") != std::string::npos);
  CHECK(detail.find("nothing was appended") == std::string::npos);
  std::filesystem::remove(fail);
  // RocksDB 7.8 rates a failed WAL sync fatal: eventsd stops for its supervisor
  // (exit 70). Should a RocksDB resume from it, eventsd is stopped here.
  auto status = s->wait_exit(20s);
  INFO(s->output());
  if (status) {
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 70);
  } else {
    WARN("eventsd went on after the failed fsync (RocksDB resumed); stopped by the test");
    s->stop();
  }

  s->start();
  http_client c2{s->port()};
  auto retry = c2.post_json("/todo", body, {{"Idempotency-Key", key}});
  INFO("retry: " << retry.status << " " << retry.body);
  REQUIRE(retry.status == 201);
  auto events = read_all(c2);
  std::vector<uint64_t> with_it;
  for (size_t i = 0; i < events.size(); ++i) {
    REQUIRE(events[i].at("position") == i + 1);
    if (events[i].at("data").value("description", std::string{}) == "its fsync failed")
      with_it.push_back(i + 1);
  }
  REQUIRE(with_it.size() == 1); // once: the first attempt's, replayed, or the retry's
  CHECK(ack_of(retry).position == with_it.front());
  INFO("the failed write " << (with_it.front() == 2 ? "reached" : "did not reach") << " the disk");
  CHECK(events.size() == with_it.front());
}

namespace {

/// Runs one statement on the server of EVENTSD_TEST_PG_DSN as its admin.
void admin_sql(const std::string& sql) {
  PGconn* c = PQconnectdb(test_dsn().c_str());
  std::unique_ptr<PGconn, decltype(&PQfinish)> guard{c, &PQfinish};
  if (PQstatus(c) != CONNECTION_OK)
    throw std::runtime_error(std::string{"cannot connect to EVENTSD_TEST_PG_DSN: "} + PQerrorMessage(c));
  std::unique_ptr<PGresult, decltype(&PQclear)> r{PQexec(c, sql.c_str()), &PQclear};
  auto st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    throw std::runtime_error("`" + sql + "` failed: " + PQerrorMessage(c));
}

/// A login role (not a superuser: its connection limit holds) for one test;
/// dropped on destruction, after the databases it owns.
struct limited_role {
  std::string name = "eventsd_e2e_role_" + random_uuid().substr(0, 8);
  explicit limited_role(int connections) {
    admin_sql("CREATE ROLE " + name + " LOGIN CONNECTION LIMIT " + std::to_string(connections));
  }
  void limit(int connections) {
    admin_sql("ALTER ROLE " + name + " CONNECTION LIMIT " + std::to_string(connections));
  }
  ~limited_role() {
    try {
      admin_sql("DROP ROLE IF EXISTS " + name);
    } catch (const std::exception& e) {
      std::cerr << "e2e: cannot drop role " << name << ": " << e.what() << "\n";
    }
  }
};

} // namespace

TEST_CASE("a read-model reader that cannot connect is skipped: reads go to the one that can, "
          "/readyz is ready while one connects and says which cannot, and the failing reader "
          "connects by itself once PostgreSQL lets it",
          "[e2e][faults][postgres][readers]") {
  // The role may open 1 connection: the projection's. Then 2: one reader too.
  limited_role role{1};
  test_database db;
  admin_sql("ALTER DATABASE " + db.name() + " OWNER TO " + role.name);
  server_options o = server_options::with_args({"--postgres.readers=2"});
  o.dsn = db.dsn() + " user=" + role.name;
  server s{o};
  http_client c{s.port()};
  auto a = ack_of(c.post_json("/todo", {{"description", "read through one reader"}}));
  auto read_a = [&] { return c.get("/todo/" + a.id + "?minPosition=" + std::to_string(a.position)); };
  auto readers_check = [&](const response& r) {
    auto j = r.json_body();
    return (r.status == 200 ? j : j["checks"]).value("readModelReaders", std::string{});
  };

  // Before any read no reader has tried: not known, and not "ok".
  REQUIRE(eventually([&] { return c.get("/readyz").status == 200; }, 10000ms, 50ms));
  CHECK(readers_check(c.get("/readyz")) == "unknown");

  // No reader can connect: reads are 503, and eventsd is not ready.
  for (int i = 0; i < 2; ++i) {
    auto r = read_a();
    INFO(r.status << " " << r.body);
    CHECK(is_problem(r, 503));
  }
  auto none = c.get("/readyz");
  INFO(none.body);
  CHECK(none.status == 503);
  CHECK(readers_check(none) == "2 of 2 cannot connect");
  CHECK(none.json_body()["detail"].get<std::string>().find("no read-model reader can connect")
        != std::string::npos);

  // One may connect now: a failing reader retries by itself, and reads go
  // to the one that connected — none of them is answered 503.
  role.limit(2);
  REQUIRE(eventually([&] { return readers_check(c.get("/readyz")) == "1 of 2 cannot connect"; },
                     10000ms, 100ms));
  auto ready = c.get("/readyz");
  INFO(ready.body);
  CHECK(ready.status == 200);
  for (int i = 0; i < 20; ++i) {
    auto r = read_a();
    INFO("read " << i << ": " << r.status << " " << r.body);
    CHECK(r.status == 200);
  }

  // Both may: the second connects too, by itself.
  role.limit(-1);
  REQUIRE(eventually([&] { return readers_check(c.get("/readyz")) == "ok"; }, 10000ms, 100ms));
  CHECK(s.output().find("eventsd: read-model reader connected again") != std::string::npos);
}

TEST_CASE("connections past the descriptor budget are answered 503 and closed at once, so idle "
          "clients cannot take the descriptors the event store needs; writes go on",
          "[e2e][faults][descriptors]") {
  // eventsd under a hard limit of 128 descriptors (it raises its soft limit
  // to the hard one), of which it keeps 32 for the store and PostgreSQL.
  temp_dir d{"eventsd-faults-fds-"};
  auto wrapper = d.path() + "/eventsd-128-fds";
  {
    std::ofstream w{wrapper};
    w << "#!/bin/sh\nulimit -Sn 128 && ulimit -Hn 128 || exit 125\nexec '" << eventsd_binary()
      << "' \"$@\"\n";
  }
  std::filesystem::permissions(wrapper, std::filesystem::perms::owner_all);
  std::unique_ptr<server> s;
  {
    env_for_children binary{"EVENTSD_BINARY", wrapper};
    s = std::make_unique<server>();
  }
  http_client c{s->port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the crowd"}}).status == 201);

  // 120 clients, more than the budget leaves room for; every other one sends
  // a request at once (a refused one must still read its 503, not a reset).
  std::vector<int> idle;
  for (int i = 0; i < 120; ++i) {
    int fd = connect_loopback(s->port());
    if (i % 2 == 1) {
      std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
      REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
    }
    idle.push_back(fd);
  }
  // The refused ones are told at once and closed; the others hear nothing,
  // or their request's answer.
  size_t refused = 0, kept = 0, closed_silently = 0;
  std::string refusal;
  auto deadline = std::chrono::steady_clock::now() + 2s; // one wait for all (idle ones time out at 30 s)
  for (int fd : idle) {
    std::string got;
    bool ended = false;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
      pollfd p{fd, POLLIN, 0};
      int wait = got.empty() ? static_cast<int>(std::max<int64_t>(0, left.count())) : 100;
      if (::poll(&p, 1, wait) != 1)
        break;
      char buf[1024];
      auto n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) {
        ended = true; // closed (0) or reset (-1)
        break;
      }
      got.append(buf, static_cast<size_t>(n));
    }
    if (got.rfind("HTTP/1.1 503", 0) == 0 && ended) {
      ++refused;
      refusal = got;
    } else if (got.empty() && ended) {
      ++closed_silently;
    } else {
      INFO("a kept connection heard: " << got);
      CHECK((got.empty() || got.rfind("HTTP/1.1 200", 0) == 0));
      ++kept;
    }
  }
  INFO(kept << " connections kept, " << refused << " refused, " << closed_silently
            << " closed with no answer; a refusal:\n" << refusal);
  CHECK(closed_silently == 0);
  CHECK(kept > 0);
  REQUIRE(refused > 0);
  auto r = parse_response(refusal);
  CHECK(r.status == 503);
  CHECK(r.header("Retry-After") == std::optional<std::string>{"1"});
  CHECK(r.header("Content-Type") == std::optional<std::string>{"application/problem+json; charset=utf-8"});
  CHECK(r.json_body()["detail"] == "too many connections open: retry later");

  // The store still opens what it needs: writes (and their fsyncs) go on.
  for (int i = 0; i < 50; ++i) {
    auto w = c.post_json("/todo", {{"description", "while the crowd waits " + std::to_string(i)}});
    INFO("write " << i << ": " << w.status << " " << w.body);
    REQUIRE(w.status == 201);
  }
  CHECK(c.get("/readyz").status == 200);
  CHECK(metric(c, "eventsd_http_connections_refused_total") == static_cast<double>(refused));
  CHECK(s->output().find("eventsd: http: refusing connections") != std::string::npos);

  // Once the crowd goes, new clients are served again.
  for (int fd : idle)
    ::close(fd);
  CHECK(eventually([&] {
    try {
      http_client fresh{s->port()};
      return fresh.get("/healthz").status == 200;
    } catch (const std::exception&) {
      return false;
    }
  }));
  CHECK_FALSE(s->wait_exit(0ms)); // still serving
}

TEST_CASE("a create still unanswered at the drain deadline is answered 503 naming the stream to "
          "check, which after the restart holds it",
          "[e2e][faults][drain][sync-gate]") {
  gated_server g{{"--http.drain-timeout-ms=300"}};
  auto& gate = g.gate;
  auto& s = g.s;
  http_client c{s->port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the stuck disk"}}).status == 201);

  create_behind_gate create{gate, s->port(), "its disk never confirmed it in time"};
  REQUIRE(create.held());
  s->signal(SIGTERM);
  auto held = create.wait(); // answered at the drain's deadline, the disk still held
  INFO(held.status << " " << held.body);
  REQUIRE(held.status == 503);
  auto detail = held.json_body()["detail"].get<std::string>();
  static const std::regex named{R"(GET /streams/(todo-[0-9a-f-]{36}): the todo it would create)"};
  std::smatch m;
  REQUIRE(std::regex_search(detail, m, named));
  auto stream = m[1].str();

  create.open(); // the disk confirms it after all
  REQUIRE(s->wait_exit(20s));
  s->start();
  http_client c2{s->port()};
  auto written = c2.get("/streams/" + stream);
  INFO(written.status << " " << written.body);
  REQUIRE(written.status == 200);
  CHECK(written.json_body()["items"][0]["data"]["description"] == "its disk never confirmed it in time");
}

TEST_CASE("a rebuild asked for while the disk holds its syncs back: requests that come while it "
          "is being noted share its answer (a 503 after 5 s, not a 409), /admin/projections "
          "shows it active, and it starts once the note is written",
          "[e2e][faults][rebuild][sync-gate]") {
  gated_server g{std::vector<std::string>{}};
  auto& s = *g.s;
  http_client c{s.port()};
  REQUIRE(c.post_json("/todo", {{"description", "before the gate"}}).status == 201);
  std::ofstream{g.gate} << "closed\n";
  auto ask = [port = s.port()] {
    return std::async(std::launch::async, [port] {
      http_client rc{port};
      return rc.request("POST", "/admin/projections/todos/rebuild");
    });
  };
  auto first = ask();
  REQUIRE(eventually([&] { return std::filesystem::exists(g.gate + ".held"); }, 5000ms, 5ms));
  auto second = ask();
  sleep_for(300ms);
  CHECK(projection_status(c).at("rebuild").at("active") == true);
  // The note holds the store's writers: /readyz says the store is stalled.
  CHECK(eventually(
    [&] {
      auto r = c.get("/readyz");
      return r.status == 503 && r.json_body().at("checks").at("eventStore") == "stalled";
    },
    4000ms, 100ms));
  for (auto* answer : {&first, &second}) {
    auto r = answer->get();
    INFO("POST rebuild while the note waits for the disk: " << r.status << " " << r.body);
    CHECK(r.status == 503);
    CHECK(r.body.find("not noted within 5 s") != std::string::npos);
    CHECK(r.header("Retry-After").has_value());
  }
  std::filesystem::remove(g.gate);
  // Noted now, so it runs (PostgreSQL is never reached here: it stays at its
  // start), and one runs at a time.
  REQUIRE(eventually(
    [&] { return c.request("POST", "/admin/projections/todos/rebuild").status == 409; }, 10000ms,
    20ms));
  CHECK(projection_status(c).at("rebuild").at("active") == true);
}

TEST_CASE("a rebuild that ends while the disk holds a write's sync back is swapped in and "
          "reported done: forgetting its note does not hold the projection",
          "[e2e][faults][rebuild][sync-gate]") {
  // Small steps, so that the rebuild still runs once the gate is closed.
  gated_server g{server_options::with_args({"--projection.rebuild-batch-size=1"})};
  auto& s = *g.s;
  std::vector<std::string> samples;
  REQUIRE(write_events(s.port(), 1500, 4, samples) == 0);
  http_client c{s.port()};
  REQUIRE(c.request("POST", "/admin/projections/todos/rebuild").status == 202);
  create_behind_gate held{g.gate, s.port(), "written while the disk holds its sync"};
  REQUIRE(held.held());
  CHECK(projection_status(c).at("rebuild").at("active") == true);
  json last;
  bool done = eventually(
    [&] {
      last = projection_status(c);
      auto& rb = last.at("rebuild");
      return rb.at("completed") == 1 && rb.at("active") == false;
    },
    30000ms, 20ms);
  INFO("last /admin/projections: " << last.dump());
  CHECK(done);
  CHECK(last.at("lastError").is_null());
  CHECK_FALSE(held.answered());
  held.open();
  CHECK(held.wait().status == 201);
  // Its note was forgotten: the next start has no rebuild to take up.
  s.restart();
  http_client c2{s.port()};
  REQUIRE(eventually([&] { return c2.get("/readyz").status == 200; }, 10000ms, 20ms));
  sleep_for(300ms);
  CHECK(projection_status(c2).at("rebuild").at("active") == false);
  CHECK(s.output().find("taking up") == std::string::npos);
}
