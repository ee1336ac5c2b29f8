// Tests of projections/projection.hpp: `to_change` for every Todo event type,
// and the projection actor on a real RocksDB event log (fresh temp dir) and a
// real PostgreSQL (a fresh database on the server of EVENTSD_TEST_PG_DSN,
// dropped afterwards), in the eventual, on-demand and scheduled modes.
#include "projections/projection.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <libpq-fe.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "actors/todo.hpp"
#include "actors/todo_codec.hpp"
#include "core/messages.hpp"
#include "core/uuid.hpp"
#include "projections/todo_read_model.hpp"
#include "storage/event_log.hpp"

using namespace eventsd;
using namespace eventsd::projections;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// -- to_change -----------------------------------------------------------------

const std::string todo_id = "0b7c1e5e-3f0a-4d8e-9a4c-1f2e3d4c5b6a";

storage::recorded_event recorded(const std::string& stream, const std::string& type,
                                 const std::string& data, uint64_t version, uint64_t position) {
  return storage::recorded_event{core::make_uuid(), stream, type, version, position,
                                 1'700'000'000'000, data};
}

/// `e` as the Todo aggregate logs it: stream, type name and codec payload.
storage::recorded_event logged(const todo::event& e, uint64_t version, uint64_t position) {
  return recorded("todo-" + todo_id, std::string{todo::type_name(e)}, todo::encode_data(e),
                  version, position);
}

todo_change change(std::optional<std::string> description, std::optional<std::string> status,
                   uint64_t version, uint64_t position) {
  return todo_change{todo_id, std::move(description), std::move(status), version, position};
}

// -- PostgreSQL ------------------------------------------------------------------

std::string test_dsn() {
  const char* v = std::getenv("EVENTSD_TEST_PG_DSN");
  if (v == nullptr || *v == '\0')
    FAIL("EVENTSD_TEST_PG_DSN is not set: these tests need a real PostgreSQL. Start one with "
         "scripts/lib/pg.sh's pg_start, or export e.g. "
         "EVENTSD_TEST_PG_DSN='host=127.0.0.1 port=55432 dbname=eventsd_test user=postgres'.");
  return v;
}

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 gen{std::random_device{}() ^ uint64_t(::getpid())};
  std::string s;
  for (size_t i = 0; i < n; ++i)
    s += "0123456789abcdef"[gen() % 16];
  return s;
}

/// `dsn` (conninfo or URI) with its dbname replaced.
std::string with_dbname(const std::string& dsn, const std::string& dbname) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    std::string msg = err ? err : "out of memory";
    PQfreemem(err);
    FAIL("cannot parse EVENTSD_TEST_PG_DSN: " << msg);
  }
  std::string out;
  for (auto* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || std::string{o->keyword} == "dbname")
      continue;
    std::string v;
    for (const char* p = o->val; *p; ++p) {
      if (*p == '\'' || *p == '\\')
        v += '\\';
      v += *p;
    }
    out += std::string{o->keyword} + "='" + v + "' ";
  }
  PQconninfoFree(opts);
  return out + "dbname=" + dbname;
}

void admin_exec(const std::string& dsn, const std::string& sql) {
  PGconn* c = PQconnectdb(dsn.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string err = PQerrorMessage(c);
    PQfinish(c);
    FAIL("cannot connect to PostgreSQL: " << err);
  }
  PGresult* r = PQexec(c, sql.c_str());
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  std::string err = PQerrorMessage(c);
  PQclear(r);
  PQfinish(c);
  if (!ok)
    FAIL("`" << sql << "` failed: " << err);
}

/// A fresh database on the server of EVENTSD_TEST_PG_DSN, dropped on destruction.
struct fresh_database {
  std::string admin = test_dsn();
  std::string name = "eventsd_proj_" + random_hex(12);
  std::string dsn = with_dbname(admin, name);

  fresh_database() { admin_exec(admin, "CREATE DATABASE " + name); }
  ~fresh_database() {
    PGconn* c = PQconnectdb(admin.c_str());
    if (PQstatus(c) == CONNECTION_OK)
      PQclear(PQexec(c, ("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)").c_str()));
    PQfinish(c);
  }
};

// -- the actor fixture ----------------------------------------------------------

/// An actor system configured like main's.
struct projection_config : caf::actor_system_config {
  projection_config() {
    core::configure_messages(*this);
    core::add_error_category<todo::todo_errc>(*this, "todo");
    core::add_error_category<projection_errc>(*this, "projection");
    set("scheduler.max-threads", 4);
  }
};

template <class Enum>
bool is_error(const caf::error& err, Enum code) {
  return err.category() == caf::detail::error_factory<Enum>::category
         && err.code() == static_cast<uint8_t>(code);
}

/// A projection's answer: a position or an error.
struct answer {
  std::optional<uint64_t> position;
  caf::error error;
  std::string rendered;
  std::chrono::milliseconds took{0};
};

/// A fresh event log and database, an actor system, and helpers to write Todo
/// events and to ask the projections.
class fixture {
public:
  fixture() : sys_(cfg_) {
    char tmpl[] = "/tmp/eventsd-projection-test-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr)
      FAIL("mkdtemp failed");
    dir_ = tmpl;
    storage::log_options lo;
    lo.dir = dir_ + "/log";
    lo.block_cache_mb = 8;
    auto opened = storage::event_log::open(lo);
    if (!opened.ok())
      FAIL("cannot open the event log: " << opened.error().detail);
    log_ = std::move(opened).value();
  }

  ~fixture() {
    for (auto& p : spawned_)
      caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
    sys_.await_all_actors_done();
    log_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  fixture(const fixture&) = delete;
  fixture& operator=(const fixture&) = delete;

  const std::string& dsn() const { return db_.dsn; }
  const fresh_database& db() const { return db_; }
  storage::event_log& log() { return *log_; }
  caf::actor_system& sys() { return sys_; }

  projection_actor spawn(projection_mode mode, std::chrono::milliseconds interval = 1000ms,
                         std::optional<std::string> dsn = std::nullopt) {
    projection_options o;
    o.dsn = dsn.value_or(db_.dsn);
    o.mode = mode;
    o.interval = interval;
    auto p = spawn_projection(sys_, log_.get(), o);
    spawned_.push_back(p);
    return p;
  }

  /// Spawns with `o` as given (its dsn replaced by the test database's).
  projection_actor spawn(projection_options o) {
    o.dsn = db_.dsn;
    auto p = spawn_projection(sys_, log_.get(), o);
    spawned_.push_back(p);
    return p;
  }

  void stop(const projection_actor& p) {
    caf::scoped_actor self{sys_};
    self->monitor(p);
    caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
    self->receive([](const caf::down_msg&) {}, caf::after(10s) >> [] { FAIL("did not stop"); });
  }

  /// Appends one Todo event to `id`'s stream; returns its position.
  uint64_t append(const std::string& id, const todo::event& e) {
    storage::append_request req;
    req.stream = "todo-" + id;
    req.expected_version = storage::any_version;
    req.events.push_back(storage::proposed_event{core::make_uuid(),
                                                 std::string{todo::type_name(e)},
                                                 todo::encode_data(e), 1'700'000'000'000});
    auto results = log_->append(std::span{&req, 1});
    if (results.size() != 1 || !results.front().ok())
      FAIL("append failed");
    return results.front()->last_position;
  }

  /// Tells `p` that the log grew (as the log writer does).
  void notify(const projection_actor& p) { caf::anon_send(p, core::committed{log_->head()}); }

  answer wait(const projection_actor& p, uint64_t position, uint64_t timeout_ms) {
    caf::scoped_actor self{sys_};
    answer a;
    auto started = clock_type::now();
    self->request(p, caf::duration{30s}, wait_atom_v, position, timeout_ms)
      .receive([&](uint64_t pos) { a.position = pos; },
               [&](caf::error& e) {
                 a.rendered = sys_.render(e);
                 a.error = std::move(e);
               });
    a.took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
    return a;
  }

  answer catch_up(const projection_actor& p, uint64_t timeout_ms) {
    caf::scoped_actor self{sys_};
    answer a;
    auto started = clock_type::now();
    self->request(p, caf::duration{30s}, catch_up_atom_v, timeout_ms)
      .receive([&](uint64_t pos) { a.position = pos; },
               [&](caf::error& e) {
                 a.rendered = sys_.render(e);
                 a.error = std::move(e);
               });
    a.took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started);
    return a;
  }

  projection_status stats(const projection_actor& p) {
    caf::scoped_actor self{sys_};
    projection_status s;
    self->request(p, caf::duration{30s}, stats_atom_v)
      .receive([&](projection_status& st) { s = std::move(st); },
               [&](caf::error& e) { FAIL("stats failed: " << sys_.render(e)); });
    return s;
  }

  /// The `todos` checkpoint as stored in PostgreSQL.
  uint64_t checkpoint() {
    auto& m = model();
    auto cp = m.checkpoint();
    if (!cp.ok())
      FAIL("checkpoint: " << cp.error().detail);
    return cp.value();
  }

  /// The `todos` row of `id`, or nullopt when there is none.
  std::optional<todo_row> row(const std::string& id) {
    auto r = model().get(id);
    if (!r.ok()) {
      if (r.error().code != projection_errc::not_found)
        FAIL("get " << id << ": " << r.error().detail);
      return std::nullopt;
    }
    return r.value().row;
  }

  /// Runs `sql` on the test database.
  void exec(const std::string& sql) { admin_exec(db_.dsn, sql); }

private:
  todo_read_model& model() {
    if (!model_) {
      model_ = std::make_unique<todo_read_model>(db_.dsn);
      auto r = model_->connect();
      if (!r.ok())
        FAIL("connect: " << r.error().detail);
    }
    return *model_;
  }

  fresh_database db_;
  std::string dir_;
  std::unique_ptr<storage::event_log> log_;
  projection_config cfg_;
  caf::actor_system sys_;
  std::vector<projection_actor> spawned_;
  std::unique_ptr<todo_read_model> model_;
};

todo_row row_of(const std::string& id, const std::string& description, const std::string& status,
                uint64_t version) {
  return todo_row{id, description, status, version};
}

/// Polls `done` every 10 ms for up to `limit`.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  while (!done()) {
    if (clock_type::now() > deadline)
      return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

} // namespace

// -- to_change --------------------------------------------------------------------

TEST_CASE("to_change: created sets description and status Created", "[projections][to_change]") {
  auto c = to_change(logged(todo::created{"buy milk"}, 1, 7));
  REQUIRE(c);
  CHECK(*c == change("buy milk", "Created", 1, 7));
  // The wire format the read model relies on, independent of the codec.
  auto literal = to_change(recorded("todo-" + todo_id, "created",
                                    R"({"description":"tea","status":"Created"})", 1, 3));
  REQUIRE(literal);
  CHECK(*literal == change("tea", "Created", 1, 3));
}

TEST_CASE("to_change: description-changed sets only the description", "[projections][to_change]") {
  auto c = to_change(logged(todo::description_changed{"buy oat milk"}, 2, 9));
  REQUIRE(c);
  CHECK(*c == change("buy oat milk", std::nullopt, 2, 9));
}

TEST_CASE("to_change: status-changed-to-in-progress sets only the status InProgress",
          "[projections][to_change]") {
  auto c = to_change(logged(todo::status_changed_to_in_progress{}, 3, 12));
  REQUIRE(c);
  CHECK(*c == change(std::nullopt, "InProgress", 3, 12));
}

TEST_CASE("to_change: status-changed-to-done sets only the status Done",
          "[projections][to_change]") {
  auto c = to_change(logged(todo::status_changed_to_done{}, 4, 20));
  REQUIRE(c);
  CHECK(*c == change(std::nullopt, "Done", 4, 20));
}

TEST_CASE("to_change: undo-to-some-history-state restores description and status",
          "[projections][to_change]") {
  auto undo = todo::undone_to{core::make_uuid(), 1, "buy milk", todo::status::created};
  auto c = to_change(logged(undo, 5, 31));
  REQUIRE(c);
  CHECK(*c == change("buy milk", "Created", 5, 31));
  auto back_to_done = todo::undone_to{core::make_uuid(), 4, "buy oat milk", todo::status::done};
  auto d = to_change(logged(back_to_done, 6, 40));
  REQUIRE(d);
  CHECK(*d == change("buy oat milk", "Done", 6, 40));
  // The target version in the payload is not the row's version.
  CHECK(d->version == 6);
}

TEST_CASE("to_change: payloads in any JSON spelling give the same change as eventsd's own",
          "[projections][to_change]") {
  auto fields = [](const std::string& data) {
    auto c = to_change(recorded("todo-" + todo_id, "created", data, 1, 1));
    REQUIRE(c);
    return std::pair{c->description, c->status};
  };
  using opt = std::optional<std::string>;
  CHECK(fields(R"({"description":"x","status":"Done"})") == std::pair{opt{"x"}, opt{"Done"}});
  CHECK(fields(R"( { "status" : "Done" , "description" : "x" } )")
        == std::pair{opt{"x"}, opt{"Done"}});
  CHECK(fields(R"({"description":"caf\u00e9 \"q\""})")
        == std::pair{opt{"caf\xC3\xA9 \"q\""}, opt{}});
  CHECK(fields(R"({"description":"a","description":"b"})") == std::pair{opt{"b"}, opt{}});
  CHECK(fields(R"({"eventId":"e","version":3,"description":"d","status":"InProgress"})")
        == std::pair{opt{"d"}, opt{"InProgress"}});
  CHECK(fields(R"({"description":7,"status":"Done"})") == std::pair{opt{}, opt{"Done"}});
  CHECK(fields(R"({"other":"x"})") == std::pair{opt{}, opt{}});
  CHECK(fields("{}") == std::pair{opt{}, opt{}});
  // Look-alikes of the plain shape that are not JSON change nothing.
  CHECK_FALSE(to_change(recorded("todo-" + todo_id, "created", R"({"description":"x"}x)", 1, 1)));
  CHECK_FALSE(to_change(recorded("todo-" + todo_id, "created", R"({"description":"x",})", 1, 1)));
  CHECK_FALSE(to_change(recorded("todo-" + todo_id, "created", "{\"description\":\"a\nb\"}", 1, 1)));
}

TEST_CASE("to_change: events of other streams and unreadable payloads change nothing",
          "[projections][to_change]") {
  CHECK_FALSE(to_change(recorded("account-" + todo_id, "created",
                                 R"({"description":"x","status":"Created"})", 1, 1)));
  CHECK_FALSE(to_change(recorded("todos-" + todo_id, "created",
                                 R"({"description":"x","status":"Created"})", 1, 1)));
  CHECK_FALSE(to_change(recorded("todo-" + todo_id, "created", "{not json", 1, 1)));
  CHECK_FALSE(to_change(recorded("todo-" + todo_id, "created", R"(["a","b"])", 1, 1)));
}

// -- the projection actor ------------------------------------------------------------

TEST_CASE("projection (eventual): wait_atom answers once the position is applied, and the rows "
          "are the fold of the log",
          "[projections][actor][postgres]") {
  fixture f;
  auto a = core::make_uuid(), b = core::make_uuid();
  auto p = f.spawn(projection_mode::eventual);
  f.append(a, todo::created{"first todo"});
  f.append(a, todo::description_changed{"first todo, renamed"});
  f.append(b, todo::created{"second todo"});
  auto last = f.append(a, todo::status_changed_to_done{});
  f.notify(p);

  auto w = f.wait(p, last, 5000);
  INFO("wait: " << w.rendered);
  REQUIRE(w.position);
  CHECK(*w.position >= last);
  CHECK(f.checkpoint() == last);
  CHECK(f.row(a) == row_of(a, "first todo, renamed", "Done", 3));
  CHECK(f.row(b) == row_of(b, "second todo", "Created", 1));

  // A position already applied answers at once.
  auto again = f.wait(p, 2, 5000);
  REQUIRE(again.position);
  CHECK(*again.position == last);
  CHECK(again.took < 1000ms);

  // More events, woken by `committed`: undo back to the first event.
  f.append(b, todo::status_changed_to_in_progress{});
  auto undo = f.append(a, todo::undone_to{core::make_uuid(), 1, "first todo", todo::status::created});
  f.notify(p);
  auto w2 = f.wait(p, undo, 5000);
  REQUIRE(w2.position);
  CHECK(f.row(a) == row_of(a, "first todo", "Created", 4));
  CHECK(f.row(b) == row_of(b, "second todo", "InProgress", 2));

  auto st = f.stats(p);
  CHECK(st.name == "todos");
  CHECK(st.mode == "eventual");
  CHECK(st.position == undo);
  CHECK(st.head == undo);
  CHECK(st.state == "live");
  CHECK(st.connected);
  CHECK(st.last_error.empty());
  CHECK_FALSE(st.rebuilding);
}

TEST_CASE("projection (eventual): with a batch wait, a small batch waits for company; a full "
          "batch and a batch a read waits for go at once",
          "[projections][actor][postgres]") {
  fixture f;
  projection_options o;
  o.mode = projection_mode::eventual;
  o.batch_size = 3;
  o.batch_wait = std::chrono::hours{1}; // longer than the test: only company or a read moves it
  auto p = f.spawn(o);
  auto a = core::make_uuid();

  // The first batch has no previous one to wait after.
  f.append(a, todo::created{"one"});
  f.notify(p);
  REQUIRE(eventually([&] { return f.checkpoint() == 1; }, 5s));

  // One event: fewer than batch_size, so it waits (for an hour).
  f.append(a, todo::description_changed{"two"});
  f.notify(p);
  f.stats(p); // queued behind the notification: the worker has it now
  std::this_thread::sleep_for(300ms);
  CHECK(f.checkpoint() == 1);

  // Two more make a full batch: applied now, all three in order.
  f.append(a, todo::status_changed_to_in_progress{});
  auto full = f.append(a, todo::description_changed{"four"});
  f.notify(p);
  REQUIRE(eventually([&] { return f.checkpoint() == full; }, 5s));
  CHECK(f.row(a) == row_of(a, "four", "InProgress", 4));

  // A small batch again, but a read waits for it (read-your-writes): applied now.
  auto last = f.append(a, todo::status_changed_to_done{});
  f.notify(p);
  auto w = f.wait(p, last, 5000);
  INFO("wait: " << w.rendered);
  REQUIRE(w.position);
  CHECK(*w.position == last);
  CHECK(f.row(a) == row_of(a, "four", "Done", 5));
}

TEST_CASE("projection: wait_atom for a position the log has not reached fails with "
          "projection_errc::timeout after its timeout, and the projection goes on",
          "[projections][actor][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  auto p = f.spawn(projection_mode::eventual);
  auto first = f.append(a, todo::created{"waiting"});
  f.notify(p);
  REQUIRE(f.wait(p, first, 5000).position);

  auto w = f.wait(p, first + 3, 300);
  INFO("wait: " << w.rendered << " after " << w.took.count() << " ms");
  REQUIRE_FALSE(w.position);
  CHECK(is_error(w.error, projection_errc::timeout));
  CHECK(w.took >= 250ms);
  CHECK(w.took < 3000ms);

  // Two waiters at once: the nearer one is answered first, the farther one later.
  caf::scoped_actor self{f.sys()};
  std::optional<uint64_t> near_answer, far_answer;
  auto near = self->request(p, caf::duration{30s}, wait_atom_v, first + 1, uint64_t{5000});
  auto far = self->request(p, caf::duration{30s}, wait_atom_v, first + 2, uint64_t{5000});
  f.append(a, todo::status_changed_to_in_progress{});
  f.notify(p);
  near.receive([&](uint64_t pos) { near_answer = pos; },
               [&](caf::error& e) { FAIL("near wait failed: " << f.sys().render(e)); });
  CHECK(near_answer == first + 1);
  f.append(a, todo::status_changed_to_done{});
  f.notify(p);
  far.receive([&](uint64_t pos) { far_answer = pos; },
              [&](caf::error& e) { FAIL("far wait failed: " << f.sys().render(e)); });
  CHECK(far_answer == first + 2);
  CHECK(f.row(a) == row_of(a, "waiting", "Done", 3));
}

TEST_CASE("projection (on-demand): nothing is applied until catch_up_atom, which applies up to "
          "the head; wait_atom catches up too",
          "[projections][actor][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  auto p = f.spawn(projection_mode::on_demand);
  f.append(a, todo::created{"on demand"});
  auto head = f.append(a, todo::description_changed{"on demand, renamed"});
  f.notify(p); // ignored in this mode
  f.stats(p); // queued behind the notification: the worker has it now
  std::this_thread::sleep_for(300ms);
  CHECK(f.stats(p).position == 0);
  CHECK(f.checkpoint() == 0);
  CHECK_FALSE(f.row(a));

  auto c = f.catch_up(p, 5000);
  INFO("catch_up: " << c.rendered);
  REQUIRE(c.position);
  CHECK(*c.position == head);
  CHECK(f.checkpoint() == head);
  CHECK(f.row(a) == row_of(a, "on demand, renamed", "Created", 2));

  // Caught up already: answers at once.
  auto c2 = f.catch_up(p, 5000);
  REQUIRE(c2.position);
  CHECK(*c2.position == head);

  auto next = f.append(a, todo::status_changed_to_done{});
  std::this_thread::sleep_for(100ms);
  CHECK(f.checkpoint() == head);
  auto w = f.wait(p, next, 5000);
  INFO("wait: " << w.rendered);
  REQUIRE(w.position);
  CHECK(*w.position == next);
  CHECK(f.row(a) == row_of(a, "on demand, renamed", "Done", 3));
  CHECK(f.stats(p).mode == "on-demand");

  // A position past the head cannot be caught up to: it times out.
  auto beyond = f.wait(p, next + 10, 200);
  CHECK(is_error(beyond.error, projection_errc::timeout));
}

TEST_CASE("projection (scheduled): applies what is new on each tick and nothing between ticks",
          "[projections][actor][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  auto spawned = clock_type::now();
  auto p = f.spawn(projection_mode::scheduled, 2000ms);
  auto first = f.append(a, todo::created{"scheduled"});
  f.notify(p); // ignored in this mode
  // Before the first tick (2 s after the spawn) nothing is applied.
  while (clock_type::now() - spawned < 1200ms) {
    CHECK(f.checkpoint() == 0);
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(eventually([&] { return f.checkpoint() == first; }, 3000ms));
  auto ticked = clock_type::now();
  INFO("first tick applied " << std::chrono::duration_cast<std::chrono::milliseconds>(ticked - spawned).count()
                             << " ms after the spawn");
  CHECK(ticked - spawned >= 1800ms);

  auto second = f.append(a, todo::status_changed_to_done{});
  f.notify(p);
  // Nothing between the ticks (the test may see a tick late: it looks for
  // 1.2 s of the 2)...
  while (clock_type::now() - ticked < 1200ms) {
    CHECK(f.checkpoint() == first);
    std::this_thread::sleep_for(50ms);
  }
  CHECK(f.row(a) == row_of(a, "scheduled", "Created", 1));
  // ...and everything on the next one.
  REQUIRE(eventually([&] { return f.checkpoint() == second; }, 2500ms));
  CHECK(f.row(a) == row_of(a, "scheduled", "Done", 2));
  CHECK(f.stats(p).mode == "scheduled");
}

TEST_CASE("projection: a new projection resumes from the stored checkpoint and never applies an "
          "event twice",
          "[projections][actor][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  auto p = f.spawn(projection_mode::eventual);
  f.append(a, todo::created{"resumed"});
  auto applied = f.append(a, todo::description_changed{"resumed, renamed"});
  f.notify(p);
  REQUIRE(f.wait(p, applied, 5000).position);
  f.stop(p);

  // Tamper with the row behind the projection's back: a replay would undo it.
  f.exec("UPDATE todos SET description = 'tampered'");
  auto p2 = f.spawn(projection_mode::eventual);
  auto st = f.stats(p2);
  CHECK(st.position == applied);
  f.notify(p2);
  REQUIRE(f.wait(p2, applied, 5000).position);
  std::this_thread::sleep_for(100ms);
  CHECK(f.row(a) == row_of(a, "tampered", "Created", 2));

  auto next = f.append(a, todo::status_changed_to_in_progress{});
  f.notify(p2);
  REQUIRE(f.wait(p2, next, 5000).position);
  CHECK(f.row(a) == row_of(a, "tampered", "InProgress", 3));
  CHECK(f.checkpoint() == next);
}

TEST_CASE("projection: with PostgreSQL never reached a wait_atom fails as unavailable in "
          "eventsd's words, claiming no position, and stats show PostgreSQL's reason",
          "[projections][actor]") {
  fixture f;
  auto a = core::make_uuid();
  auto p = f.spawn(projection_mode::eventual, 1000ms,
                   "host=127.0.0.1 port=1 dbname=eventsd user=postgres connect_timeout=1");
  auto pos = f.append(a, todo::created{"nowhere to go"});
  f.notify(p);
  auto w = f.wait(p, pos, 300);
  INFO("wait: " << w.rendered);
  REQUIRE_FALSE(w.position);
  CHECK(is_error(w.error, projection_errc::unavailable));
  // The reason is for the log and the admin route, not for a waiting client.
  CHECK(w.rendered.find("PostgreSQL not reached since the start") != std::string::npos);
  CHECK(w.rendered.find("Connection refused") == std::string::npos);
  CHECK(w.rendered.find("127.0.0.1") == std::string::npos);
  auto st = f.stats(p);
  CHECK_FALSE(st.connected);
  CHECK(st.position == 0);
  CHECK(st.head == pos);
  CHECK(st.state == "error");
  CHECK(st.last_error.find("Connection refused") != std::string::npos);
}

TEST_CASE("projection: PostgreSQL lost after the read model was reached at position 0 is "
          "reported with that position, not as never reached",
          "[projections][actor][postgres]") {
  fixture f;
  auto p = f.spawn(projection_mode::on_demand);
  REQUIRE(f.catch_up(p, 5000).position == 0u);
  REQUIRE(f.stats(p).connected);
  // No new connection to the test database from here on; the projection's is ended.
  struct refuse_connections {
    const fresh_database& db;
    explicit refuse_connections(const fresh_database& d) : db(d) {
      admin_exec(db.admin, "ALTER DATABASE " + db.name + " ALLOW_CONNECTIONS false");
    }
    ~refuse_connections() {
      admin_exec(db.admin, "ALTER DATABASE " + db.name + " ALLOW_CONNECTIONS true");
    }
  } refused{f.db()};
  admin_exec(f.db().admin, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE datname = '" + f.db().name
                             + "' AND application_name = 'eventsd projection'");
  auto pos = f.append(core::make_uuid(), todo::created{"after the loss"});
  f.notify(p);
  auto a = f.catch_up(p, 300);
  INFO("catch-up: " << a.rendered);
  REQUIRE_FALSE(a.position);
  CHECK(is_error(a.error, projection_errc::unavailable));
  CHECK(a.rendered.find("not reached since the start") == std::string::npos);
  CHECK(a.rendered.find("had reached position 0") != std::string::npos);
  auto st = f.stats(p);
  CHECK(st.position_known);
  CHECK(st.position == 0);
  CHECK(st.head == pos);
  CHECK(st.state == "error");
}

// -- the read-model reader ---------------------------------------------------------

TEST_CASE("read-model reader: lookups sent together are each answered with their own row, "
          "or not_found with the read model's position",
          "[projections][actor][postgres]") {
  fixture f;
  todo_read_model writer{f.dsn()};
  REQUIRE(writer.connect().ok());
  // 300 todos: more than one query's batch, so the reader splits it.
  std::vector<todo_change> changes;
  std::vector<std::string> ids;
  for (unsigned i = 0; i < 300; ++i) {
    ids.push_back(core::make_uuid());
    changes.push_back(todo_change{ids.back(), "todo " + std::to_string(i), "Created", 1, i + 1});
  }
  REQUIRE(writer.apply(changes, 300).ok());

  auto reader = spawn_read_model_reader(f.sys(), f.dsn());
  struct outcome {
    std::optional<todo_answer> answer;
    caf::error error;
  };
  const size_t n = 2 * ids.size();
  std::vector<outcome> got(n);
  std::atomic<size_t> answered{0};
  // Even slots ask for a stored todo, odd ones for an unknown id.
  for (size_t k = 0; k < n; ++k) {
    auto id = k % 2 == 0 ? ids[k / 2] : core::make_uuid();
    caf::anon_send(reader, fetch_atom_v, id,
                   core::reply_to<todo_answer>{[&, k](caf::expected<todo_answer> r) {
                     if (r)
                       got[k].answer = std::move(*r);
                     else
                       got[k].error = std::move(r.error());
                     ++answered;
                   }});
  }
  REQUIRE(eventually([&] { return answered == n; }, 10s));
  for (size_t k = 0; k < n; ++k) {
    INFO("lookup " << k);
    if (k % 2 == 0) {
      REQUIRE(got[k].answer);
      CHECK(got[k].answer->row.id == ids[k / 2]);
      CHECK(got[k].answer->row.description == "todo " + std::to_string(k / 2));
      CHECK(got[k].answer->position == 300);
    } else {
      REQUIRE_FALSE(got[k].answer);
      CHECK(is_error(got[k].error, projection_errc::not_found));
      auto& ctx = got[k].error.context();
      REQUIRE(ctx.size() > 1);
      REQUIRE(ctx.match_element<uint64_t>(1));
      CHECK(ctx.get_as<uint64_t>(1) == 300);
    }
  }

  // A lookup sent alone (a batch of one) answers the same way.
  // Shared: a reply after a timed-out wait must not reach a destroyed promise.
  auto alone = std::make_shared<std::promise<caf::expected<todo_answer>>>();
  auto alone_answer = alone->get_future();
  caf::anon_send(reader, fetch_atom_v, ids[7],
                 core::reply_to<todo_answer>{[alone](caf::expected<todo_answer> r) {
                   alone->set_value(std::move(r));
                 }});
  REQUIRE(alone_answer.wait_for(10s) == std::future_status::ready);
  auto a = alone_answer.get();
  if (!a)
    FAIL("fetch failed: " << f.sys().render(a.error()));
  CHECK(a->row.description == "todo 7");
  caf::anon_send_exit(reader, caf::exit_reason::user_shutdown);
}

TEST_CASE("projection (eventual): a wait for a position far ahead that timed out leaves the batch "
          "wait on",
          "[projections][postgres]") {
  fixture f;
  projection_options o;
  o.mode = projection_mode::eventual;
  o.batch_size = 3;
  o.batch_wait = std::chrono::hours{1};
  auto p = f.spawn(o);
  auto a = core::make_uuid();
  auto first = f.append(a, todo::created{"one"});
  f.notify(p);
  REQUIRE(eventually([&] { return f.checkpoint() == first; }, 5s));
  auto w = f.wait(p, first + 1000, 200); // a read for a position far ahead; times out
  CHECK(is_error(w.error, projection_errc::timeout));
  // A small batch should now wait for company (an hour):
  f.append(a, todo::description_changed{"two"});
  f.notify(p);
  f.stats(p); // queued behind the notification: the worker has it now
  std::this_thread::sleep_for(500ms);
  CHECK(f.checkpoint() == first); // the small batch still waits for company
}

TEST_CASE("projection (on-demand): after a wait for a position far ahead timed out, new events "
          "are not applied until a read asks",
          "[projections][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  auto p = f.spawn(projection_mode::on_demand);
  auto first = f.append(a, todo::created{"x"});
  auto c = f.catch_up(p, 5000);
  REQUIRE(c.position);
  auto w = f.wait(p, first + 1000, 200);
  CHECK(is_error(w.error, projection_errc::timeout));
  f.append(a, todo::description_changed{"y"});
  f.notify(p);
  f.stats(p); // queued behind the notification: the worker has it now
  std::this_thread::sleep_for(500ms);
  CHECK(f.checkpoint() == first); // on-demand: nothing applied without a read
}

TEST_CASE("projection (on-demand): over another store's read model a catch-up fails as diverged at "
          "once, not at its timeout",
          "[projections][postgres]") {
  fixture f;
  auto a = core::make_uuid();
  f.append(a, todo::created{"x"});
  projection_options o;
  o.mode = projection_mode::eventual;
  o.store = "store-A";
  auto p1 = f.spawn(o);
  f.notify(p1);
  REQUIRE(f.wait(p1, 1, 5000).position);
  f.stop(p1);
  std::this_thread::sleep_for(300ms);
  o.mode = projection_mode::on_demand;
  o.store = "store-B";
  auto p2 = f.spawn(o);
  std::this_thread::sleep_for(300ms);
  f.append(a, todo::description_changed{"y"});
  auto c = f.catch_up(p2, 5000);
  INFO("catch_up: " << c.rendered << " after " << c.took.count() << " ms");
  CHECK_FALSE(c.position);
  CHECK(is_error(c.error, projection_errc::diverged));
  CHECK(c.took < 1000ms);
}

TEST_CASE("rebuild_offline: replays the whole log into the live table `batch_size` events per "
          "transaction and leaves the checkpoint at the head; an online rebuild the store noted "
          "as asked for is then done",
          "[projections][rebuild][postgres]") {
  fixture f;
  auto a = core::make_uuid(), b = core::make_uuid();
  f.append(a, todo::created{"first"});
  f.append(b, todo::created{"second"});
  f.append(a, todo::status_changed_to_done{});
  f.append(b, todo::description_changed{"second, renamed"});
  auto head = f.append(a, todo::status_changed_to_in_progress{});
  REQUIRE(f.log().note_pending_work("rebuild todos", "1")); // a 202 whose rebuild never began
  std::vector<uint64_t> progress;
  auto r = rebuild_offline(f.log(), f.dsn(), 2, 5000ms,
                           [&](uint64_t position, uint64_t) { progress.push_back(position); });
  REQUIRE(r.ok());
  CHECK(r.value() == head);
  // One call per transaction: positions 1-2, 3-4, 5.
  CHECK(progress == std::vector<uint64_t>{2, 4, 5});
  CHECK(f.checkpoint() == head);
  CHECK(f.row(a) == row_of(a, "first", "InProgress", 3));
  CHECK(f.row(b) == row_of(b, "second, renamed", "Created", 2));
  CHECK_FALSE(f.log().pending_work("rebuild todos").value());
}
