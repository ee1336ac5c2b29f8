// Tests of the Todo read model against a real PostgreSQL (EVENTSD_TEST_PG_DSN).
// Each test works in its own randomly named tables and drops them at the end.
#include "projections/todo_read_model.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <cctype>
#include <string>
#include <thread>
#include <vector>

#include "e2e/harness.hpp"
#include "projections/pg.hpp"

#include <unistd.h>

using namespace eventsd::projections;
using namespace std::chrono_literals;
using eventsd::e2e::silent_listener;

namespace {

// libpq declares a global `struct pg_result` (PGresult), which makes the
// unqualified name ambiguous under the using-directive above.
template <class T>
using model_result = eventsd::projections::pg_result<T>;

std::string test_dsn() {
  const char* v = std::getenv("EVENTSD_TEST_PG_DSN");
  if (v == nullptr || *v == '\0')
    FAIL("EVENTSD_TEST_PG_DSN is not set: these tests need a real PostgreSQL. Run them "
         "through scripts/test (which starts a private cluster), or export e.g. "
         "EVENTSD_TEST_PG_DSN='host=127.0.0.1 port=55432 dbname=eventsd_test user=postgres'.");
  return v;
}

std::string random_hex() {
  static std::mt19937_64 gen{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(gen()));
  return std::string{buf, 10};
}

// Adds a connection parameter to a conninfo string or a URI.
std::string with_param(const std::string& dsn, const std::string& key, const std::string& value) {
  if (dsn.starts_with("postgres://") || dsn.starts_with("postgresql://"))
    return dsn + (dsn.find('?') == std::string::npos ? "?" : "&") + key + "=" + value;
  return dsn + " " + key + "=" + value;
}

// A canonical lowercase UUID derived from `n`.
std::string uuid(unsigned n) {
  char buf[37];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012x", n);
  return buf;
}

todo_change created(const std::string& id, const std::string& description, uint64_t position) {
  return {id, description, "Created", 1, position};
}

todo_change described(const std::string& id, const std::string& description, uint64_t version,
                      uint64_t position) {
  return {id, description, std::nullopt, version, position};
}

todo_change moved(const std::string& id, const std::string& status, uint64_t version,
                  uint64_t position) {
  return {id, std::nullopt, status, version, position};
}

/// A direct libpq connection for checks and cleanup behind the model's back.
struct admin {
  pg::conn_ptr conn;

  explicit admin(const std::string& dsn) {
    auto c = pg::connect(dsn);
    if (!c)
      FAIL("cannot connect to EVENTSD_TEST_PG_DSN: " << c.error().message);
    conn = std::move(*c);
  }

  pg::session session() const { return {conn.get(), std::chrono::seconds{30}}; }

  pg::result_ptr query(const char* sql, std::initializer_list<pg::param> ps = {}) {
    auto r = pg::exec(session(), sql, std::span{ps.begin(), ps.size()});
    if (!r)
      FAIL("admin query failed: " << r.error().message << " in: " << sql);
    return std::move(*r);
  }

  std::string scalar(const char* sql, std::initializer_list<pg::param> ps = {}) {
    auto r = query(sql, ps);
    REQUIRE(PQntuples(r.get()) == 1);
    return std::string{pg::text(r.get(), 0, 0)};
  }

  bool table_exists(const std::string& name) {
    return scalar("SELECT count(*) FROM pg_tables WHERE tablename = $1", {name}) == "1";
  }

  std::vector<std::string> index_names(const std::string& table) {
    auto r = query("SELECT indexname FROM pg_indexes WHERE tablename = $1 ORDER BY 1", {table});
    std::vector<std::string> out;
    for (int i = 0; i < PQntuples(r.get()); ++i)
      out.emplace_back(pg::text(r.get(), i, 0));
    return out;
  }

  void drop(const std::string& table) {
    // Best effort: cleanup must not throw from a destructor.
    auto sql = "DROP TABLE IF EXISTS " + table;
    pg::exec(session(), sql.c_str());
    const pg::param ps[] = {table};
    pg::exec(session(), "DELETE FROM eventsd_checkpoints WHERE name = $1", ps);
  }
};

/// Fresh table names for one test, dropped (with their checkpoint rows) at the end.
struct scratch {
  std::string dsn = test_dsn();
  std::string suffix = random_hex();
  std::string table = "todos_t_" + suffix;
  std::string app = "eventsd_test_" + suffix;
  admin db{dsn};
  std::vector<std::string> to_drop{table};

  /// DSN whose sessions can be found (and terminated) by application_name.
  std::string model_dsn() const { return with_param(dsn, "application_name", app); }

  /// Process ids of the sessions opened with model_dsn().
  std::vector<int> backends() {
    auto r = db.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1", {app});
    std::vector<int> pids;
    for (int i = 0; i < PQntuples(r.get()); ++i)
      pids.push_back(std::stoi(std::string{pg::text(r.get(), i, 0)}));
    return pids;
  }

  std::string another_table(const std::string& tag) {
    to_drop.push_back(table + "_" + tag);
    return to_drop.back();
  }

  ~scratch() {
    for (const auto& t : to_drop)
      db.drop(t);
  }
};

void require_ok(const model_result<void>& r) {
  if (!r)
    FAIL(to_string(r.error().code) << ": " << r.error().detail);
}

template <class T>
T require_value(model_result<T> r) {
  if (!r)
    FAIL(to_string(r.error().code) << ": " << r.error().detail);
  return std::move(r).value();
}

std::vector<std::string> ids_of(const todo_page& p) {
  std::vector<std::string> out;
  for (const auto& row : p.items)
    out.push_back(row.id);
  return out;
}

todo_query query(size_t limit, std::optional<std::string> after = std::nullopt,
                 std::optional<std::string> status = std::nullopt) {
  todo_query q;
  q.limit = limit;
  q.after = std::move(after);
  q.status = std::move(status);
  return q;
}

} // namespace

TEST_CASE("to_string names every projection error", "[projections]") {
  CHECK(std::string{to_string(projection_errc::unavailable)} == "unavailable");
  CHECK(std::string{to_string(projection_errc::not_found)} == "not_found");
  CHECK(std::string{to_string(projection_errc::query_failed)} == "query_failed");
  CHECK(std::string{to_string(projection_errc::invalid_cursor)} == "invalid_cursor");
  CHECK(std::string{to_string(projection_errc::timeout)} == "timeout");
}

TEST_CASE("operations before connect answer unavailable", "[projections][postgres]") {
  todo_read_model m{"host=127.0.0.1 port=1 dbname=eventsd_test", "todos_never_connected"};
  CHECK_FALSE(m.connected());
  CHECK(m.get(uuid(1)).error().code == projection_errc::unavailable);
  CHECK(m.list(query(10)).error().code == projection_errc::unavailable);
  CHECK(m.checkpoint().error().code == projection_errc::unavailable);
  CHECK(m.apply({}, 1).error().code == projection_errc::unavailable);
}

TEST_CASE("connect to an unreachable server answers unavailable, with libpq's reason on one "
          "line (no newline, no tab)",
          "[projections][postgres]") {
  todo_read_model m{"host=127.0.0.1 port=1 dbname=eventsd_test user=postgres connect_timeout=2"};
  auto r = m.connect();
  REQUIRE_FALSE(r);
  CHECK(r.error().code == projection_errc::unavailable);
  auto& detail = r.error().detail;
  INFO(detail);
  CHECK(detail.find("Connection refused") != std::string::npos);
  CHECK(detail.find_first_of("\n\t") == std::string::npos);
  CHECK(detail.find("  ") == std::string::npos);
  CHECK_FALSE(m.connected());
}

TEST_CASE("connect refuses a table name that is not a plain identifier",
          "[projections][postgres]") {
  for (const char* bad : {"", "Todos", "1todos", "todos; drop table x", "todo-s",
                          "eventsd_checkpoints"}) {
    todo_read_model m{test_dsn(), bad};
    auto r = m.connect();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == projection_errc::query_failed);
  }
}

TEST_CASE("connect creates the schema idempotently, also from many connections at once",
          "[projections][postgres]") {
  scratch s;
  todo_read_model a{s.dsn, s.table};
  todo_read_model b{s.dsn, s.table};
  require_ok(a.connect());
  require_ok(a.connect());
  require_ok(b.connect());
  CHECK(a.connected());
  CHECK(b.connected());
  CHECK(require_value(a.checkpoint()) == 0);
  CHECK(s.db.index_names(s.table)
        == std::vector<std::string>{s.table + "_created_idx", s.table + "_pkey",
                                    s.table + "_status_idx"});

  // A checkpoint already there is kept by later connects.
  require_ok(a.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  todo_read_model c{s.dsn, s.table};
  require_ok(c.connect());
  CHECK(require_value(c.checkpoint()) == 1);

  // Several connections creating a table that does not exist yet, at once.
  auto fresh = s.another_table("race");
  constexpr int n = 8;
  std::vector<std::unique_ptr<todo_read_model>> models;
  for (int i = 0; i < n; ++i)
    models.push_back(std::make_unique<todo_read_model>(s.dsn, fresh));
  std::vector<std::optional<projection_error>> errors(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      if (auto r = models[i]->connect(); !r)
        errors[i] = r.error();
    });
  for (auto& t : threads)
    t.join();
  for (const auto& e : errors)
    if (e)
      FAIL("concurrent connect failed: " << to_string(e->code) << ": " << e->detail);
  CHECK(require_value(models[0]->checkpoint()) == 0);
}

TEST_CASE("apply creates rows and moves the checkpoint", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  std::vector changes{created(uuid(1), "buy milk", 1), created(uuid(2), "walk dog", 2)};
  require_ok(m.apply(changes, 2));
  CHECK(require_value(m.checkpoint()) == 2);
  auto a = require_value(m.get(uuid(1)));
  CHECK(a.row == todo_row{uuid(1), "buy milk", "Created", 1});
  CHECK(a.position == 2);
  CHECK(require_value(m.get(uuid(2))).row == todo_row{uuid(2), "walk dog", "Created", 1});

  // The checkpoint may move past the last change (events of other aggregates).
  require_ok(m.apply({}, 7));
  CHECK(require_value(m.checkpoint()) == 7);
}

TEST_CASE("a replayed batch changes nothing", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  std::vector batch{created(uuid(1), "first", 1), described(uuid(1), "second", 2, 2)};
  require_ok(m.apply(batch, 2));
  require_ok(m.apply(std::vector{described(uuid(1), "third", 3, 3)}, 3));

  require_ok(m.apply(batch, 2)); // a retry of an already committed batch
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "third", "Created", 3});
  CHECK(require_value(m.checkpoint()) == 3); // never moves backwards
}

TEST_CASE("a partially overlapping batch applies only the new changes",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1), moved(uuid(1), "Done", 2, 2)}, 2));
  // Position 2 is already applied: replaying it would set the status back to Done.
  require_ok(m.apply(std::vector{moved(uuid(1), "Done", 2, 2), moved(uuid(1), "InProgress", 3, 3),
                                 created(uuid(2), "two", 4)},
                     4));
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "one", "InProgress", 3});
  CHECK(require_value(m.get(uuid(2))).row == todo_row{uuid(2), "two", "Created", 1});
  // And replaying position 2 alone after that changes nothing.
  require_ok(m.apply(std::vector{moved(uuid(1), "Done", 2, 2)}, 2));
  CHECK(require_value(m.get(uuid(1))).row.status == "InProgress");
  CHECK(require_value(m.checkpoint()) == 4);
}

TEST_CASE("a checkpoint moved by another connection since this one last saw it: only the "
          "changes past it are applied",
          "[projections][postgres]") {
  scratch s;
  todo_read_model first{s.dsn, s.table}, second{s.dsn, s.table};
  require_ok(first.connect());
  require_ok(second.connect());
  require_ok(first.apply(std::vector{created(uuid(1), "one", 1)}, 1)); // first saw 1
  require_ok(second.apply(std::vector{moved(uuid(1), "Done", 2, 2)}, 2));

  // `first` still takes the checkpoint for 1: position 2 must not be applied again
  // (it would set Done back over the InProgress at 3).
  require_ok(first.apply(std::vector{moved(uuid(1), "Done", 2, 2),
                                     moved(uuid(1), "InProgress", 3, 3), created(uuid(2), "two", 4)},
                         4));
  CHECK(require_value(first.get(uuid(1))).row == todo_row{uuid(1), "one", "InProgress", 3});
  CHECK(require_value(first.get(uuid(2))).row == todo_row{uuid(2), "two", "Created", 1});
  CHECK(require_value(first.checkpoint()) == 4);

  // Moved further by `second` again, past everything `first` now sends: nothing changes.
  require_ok(second.apply(std::vector{described(uuid(2), "two!", 2, 5)}, 6));
  require_ok(first.apply(std::vector{described(uuid(2), "late", 2, 5)}, 5));
  CHECK(require_value(first.get(uuid(2))).row.description == "two!");
  CHECK(require_value(second.checkpoint()) == 6);

  // And once both agree again, `first` goes on from there.
  require_ok(first.apply(std::vector{moved(uuid(2), "Done", 3, 7)}, 7));
  CHECK(require_value(second.get(uuid(2))).row == todo_row{uuid(2), "two!", "Done", 3});
  CHECK(require_value(second.checkpoint()) == 7);
}

TEST_CASE("changes to one todo within a batch are folded in order", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "draft", 1), created(uuid(2), "other", 2),
                                 described(uuid(1), "final", 2, 3),
                                 moved(uuid(1), "InProgress", 3, 4), moved(uuid(1), "Done", 4, 5)},
                     5));
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "final", "Done", 4});
  CHECK(require_value(m.get(uuid(2))).row == todo_row{uuid(2), "other", "Created", 1});
  // Creation order is that of the created events, not of the last change.
  CHECK(ids_of(require_value(m.list(query(10)))) == std::vector{uuid(1), uuid(2)});

  // A later batch that sets only one field keeps the other.
  require_ok(m.apply(std::vector{described(uuid(1), "renamed", 5, 6)}, 6));
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "renamed", "Done", 5});
  require_ok(m.apply(std::vector{moved(uuid(1), "Created", 6, 7)}, 7));
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "renamed", "Created", 6});
  // Updates never move a todo in the creation order.
  CHECK(ids_of(require_value(m.list(query(10)))) == std::vector{uuid(1), uuid(2)});
}

TEST_CASE("descriptions with array-literal syntax round-trip unchanged",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  const std::vector<std::string> texts{
    "say \"hi\"", "back\\slash\\", "{braces},commas", "NULL", "  spaced  ",
    "it's", "zürich ✓ 日本 😀", "\\\"", "line\nbreak\ttab", ","};
  std::vector<todo_change> changes;
  for (unsigned i = 0; i < texts.size(); ++i)
    changes.push_back(created(uuid(i + 1), texts[i], i + 1));
  require_ok(m.apply(changes, texts.size()));
  for (unsigned i = 0; i < texts.size(); ++i)
    CHECK(require_value(m.get(uuid(i + 1))).row.description == texts[i]);
}

TEST_CASE("get answers not_found for an unknown id and for a malformed one",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  CHECK(m.get(uuid(2)).error().code == projection_errc::not_found);
  auto bad = m.get("not-a-uuid");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == projection_errc::not_found);
  CHECK(m.connected());
  CHECK(require_value(m.get(uuid(1))).row.description == "one");
}

TEST_CASE("get_many answers each id in request order from one snapshot",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1), created(uuid(2), "two", 2)}, 7));
  auto upper = uuid(2);
  for (auto& c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::vector<std::string> ids{uuid(2), uuid(3), "not-a-uuid", uuid(1), upper, uuid(2)};
  auto batch = require_value(m.get_many(ids));
  CHECK(batch.position == 7);
  REQUIRE(batch.rows.size() == ids.size());
  REQUIRE(batch.rows[0]);
  CHECK(batch.rows[0]->description == "two");
  CHECK_FALSE(batch.rows[1]); // unknown
  CHECK_FALSE(batch.rows[2]); // malformed: left out, the rest still answered
  REQUIRE(batch.rows[3]);
  CHECK(batch.rows[3]->description == "one");
  REQUIRE(batch.rows[4]);
  CHECK(batch.rows[4]->id == uuid(2)); // answered in lowercase
  REQUIRE(batch.rows[5]);
  CHECK(batch.rows[5]->description == "two");
  // Only unknown or malformed ids: still the position.
  const std::vector<std::string> none{uuid(9), "x"};
  auto empty = require_value(m.get_many(none));
  CHECK(empty.position == 7);
  CHECK_FALSE(empty.rows[0]);
  CHECK_FALSE(empty.rows[1]);
}

TEST_CASE("get accepts an uppercase id and answers it in lowercase", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  const std::string id = "0000000a-0000-4000-8000-00000000000b";
  require_ok(m.apply(std::vector{created("0000000A-0000-4000-8000-00000000000B", "x", 1)}, 1));
  CHECK(require_value(m.get("0000000A-0000-4000-8000-00000000000B")).row.id == id);
}

TEST_CASE("list pages in creation order with a cursor", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  std::vector<todo_change> changes;
  std::vector<std::string> all;
  // Ids in an order unrelated to creation order.
  for (unsigned i = 0; i < 6; ++i) {
    all.push_back(uuid(100 - i * 7));
    changes.push_back(created(all.back(), "todo " + std::to_string(i), 10 + i));
  }
  require_ok(m.apply(changes, 20));

  auto p1 = require_value(m.list(query(4)));
  CHECK(ids_of(p1) == std::vector(all.begin(), all.begin() + 4));
  REQUIRE(p1.next);
  auto p2 = require_value(m.list(query(4, p1.next)));
  CHECK(ids_of(p2) == std::vector(all.begin() + 4, all.end()));
  CHECK_FALSE(p2.next);

  // A last page that is exactly full has no next cursor.
  auto q1 = require_value(m.list(query(3)));
  REQUIRE(q1.next);
  auto q2 = require_value(m.list(query(3, q1.next)));
  CHECK(ids_of(q2) == std::vector(all.begin() + 3, all.end()));
  CHECK_FALSE(q2.next);

  // Rows created after a page was read show up on the following page.
  require_ok(m.apply(std::vector{created(uuid(500), "late", 21)}, 21));
  auto q3 = require_value(m.list(query(3, q1.next)));
  CHECK(ids_of(q3) == std::vector(all.begin() + 3, all.end()));
  REQUIRE(q3.next);
  CHECK(ids_of(require_value(m.list(query(3, q3.next)))) == std::vector{uuid(500)});

  CHECK(ids_of(require_value(m.list(query(1000)))).size() == 7);
  CHECK(require_value(m.list(query(10, std::string{"0"}))).items.size() == 7);
  CHECK(require_value(m.list(query(10, std::string{"999999"}))).items.empty());
}

TEST_CASE("list filters by status", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  std::vector<todo_change> changes;
  for (unsigned i = 1; i <= 6; ++i)
    changes.push_back(created(uuid(i), std::string{"t"}.append(std::to_string(i)), i));
  changes.push_back(moved(uuid(2), "Done", 2, 7));
  changes.push_back(moved(uuid(5), "Done", 2, 8));
  changes.push_back(moved(uuid(6), "Done", 2, 9));
  changes.push_back(moved(uuid(3), "InProgress", 2, 10));
  require_ok(m.apply(changes, 10));

  auto done = require_value(m.list(query(2, std::nullopt, std::string{"Done"})));
  CHECK(ids_of(done) == std::vector{uuid(2), uuid(5)});
  REQUIRE(done.next);
  auto done2 = require_value(m.list(query(2, done.next, std::string{"Done"})));
  CHECK(ids_of(done2) == std::vector{uuid(6)});
  CHECK_FALSE(done2.next);
  for (const auto& row : done.items)
    CHECK(row.status == "Done");

  CHECK(ids_of(require_value(m.list(query(10, std::nullopt, std::string{"InProgress"}))))
        == std::vector{uuid(3)});
  CHECK(ids_of(require_value(m.list(query(10, std::nullopt, std::string{"Created"}))))
        == std::vector{uuid(1), uuid(4)});
  CHECK(require_value(m.list(query(10, std::nullopt, std::string{"Nope"}))).items.empty());
}

TEST_CASE("list rejects a malformed cursor", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  for (const char* bad : {"", "abc", "-1", "+5", "12a", " 12", "1.5", "99999999999999999999",
                          "9223372036854775808"}) {
    auto r = m.list(query(10, std::string{bad}));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == projection_errc::invalid_cursor);
  }
  CHECK(m.list(query(10, std::string{"9223372036854775807"})));
}

TEST_CASE("reads carry the checkpoint position", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  CHECK(require_value(m.list(query(10))).position == 0); // empty table, nothing applied
  require_ok(m.apply(std::vector{created(uuid(1), "one", 3)}, 5));
  CHECK(require_value(m.get(uuid(1))).position == 5);
  CHECK(require_value(m.list(query(10))).position == 5);
  require_ok(m.apply({}, 9));
  CHECK(require_value(m.get(uuid(1))).position == 9);
  auto empty = require_value(m.list(query(10, std::nullopt, std::string{"Done"})));
  CHECK(empty.items.empty());
  CHECK(empty.position == 9);
}

TEST_CASE("reset and swap_into replace the target's rows and checkpoint, repeatedly",
          "[projections][postgres]") {
  scratch s;
  auto rebuild_table = s.another_table("rebuild");
  todo_read_model live{s.dsn, s.table};
  require_ok(live.connect());
  require_ok(live.apply(std::vector{created(uuid(1), "old one", 1), created(uuid(2), "old two", 2)},
                        2));

  for (unsigned round = 1; round <= 2; ++round) {
    INFO("rebuild round " << round);
    todo_read_model rebuild{s.dsn, rebuild_table};
    require_ok(rebuild.connect());
    // Leftovers from an aborted rebuild are cleared by reset.
    require_ok(rebuild.apply(std::vector{created(uuid(999), "stale", 1)}, 1));
    require_ok(rebuild.reset());
    CHECK(require_value(rebuild.checkpoint()) == 0);
    CHECK(require_value(rebuild.list(query(10))).items.empty());
    CHECK(s.db.index_names(rebuild_table)
          == std::vector<std::string>{rebuild_table + "_created_idx", rebuild_table + "_pkey",
                                      rebuild_table + "_status_idx"});

    const auto id = uuid(10 + round);
    require_ok(rebuild.apply(std::vector{created(id, "rebuilt", 5), moved(id, "Done", 2, 6)},
                             10 * round));
    // Until the swap, readers of the live table see the old rows.
    CHECK(live.get(id).error().code == projection_errc::not_found);

    require_ok(rebuild.swap_into(s.table));

    // The live model's prepared statements now read the swapped-in table.
    auto got = require_value(live.get(id));
    CHECK(got.row == todo_row{id, "rebuilt", "Done", 2});
    CHECK(got.position == 10 * round);
    CHECK(live.get(uuid(1)).error().code == projection_errc::not_found);
    auto page = require_value(live.list(query(10)));
    CHECK(ids_of(page) == std::vector{id});
    CHECK(page.position == 10 * round);
    CHECK(require_value(live.checkpoint()) == 10 * round);
    require_ok(live.apply(std::vector{described(id, "after swap", 3, 10 * round + 1)},
                          10 * round + 1));
    CHECK(require_value(live.get(id)).row.description == "after swap");

    CHECK_FALSE(s.db.table_exists(rebuild_table));
    CHECK(s.db.scalar("SELECT count(*) FROM eventsd_checkpoints WHERE name = $1",
                      {rebuild_table})
          == "0");
    CHECK(s.db.index_names(s.table)
          == std::vector<std::string>{s.table + "_created_idx", s.table + "_pkey",
                                      s.table + "_status_idx"});
  }

  // A fresh connection to the target sees the swapped table too.
  todo_read_model reader{s.dsn, s.table};
  require_ok(reader.connect());
  CHECK(require_value(reader.checkpoint()) == 21);
}

TEST_CASE("swap_into analyzes the rebuilt table first: it is swapped in with planner "
          "statistics, not planned blind until autovacuum comes",
          "[projections][postgres]") {
  scratch s;
  auto rebuild_table = s.another_table("rebuild");
  todo_read_model live{s.dsn, s.table};
  require_ok(live.connect());
  todo_read_model rebuild{s.dsn, rebuild_table};
  require_ok(rebuild.connect());
  require_ok(rebuild.reset());
  std::vector<todo_change> changes;
  for (uint64_t i = 1; i <= 50; ++i)
    changes.push_back(created(uuid(i), "rebuilt " + std::to_string(i), i));
  require_ok(rebuild.apply(changes, 50));
  // Never analyzed nor vacuumed yet (reltuples -1, PostgreSQL 14 and later).
  const char* tuples = "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass";
  REQUIRE(s.db.scalar(tuples, {rebuild_table}) == "-1");
  require_ok(rebuild.swap_into(s.table));
  CHECK(s.db.scalar(tuples, {s.table}) == "50");
}

TEST_CASE("swap_into refuses itself and invalid targets", "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table};
  require_ok(m.connect());
  CHECK(m.swap_into(s.table).error().code == projection_errc::query_failed);
  CHECK(m.swap_into("Bad Name").error().code == projection_errc::query_failed);
  CHECK(m.swap_into("eventsd_checkpoints").error().code == projection_errc::query_failed);
  CHECK(s.db.table_exists(s.table));
}

namespace {

/// On a lost connection (todo 1 at version 1, checkpoint 1) an apply fails as
/// unavailable; after connect() the same batch is applied whole, and once.
void check_batch_retried_whole(todo_read_model& m) {
  std::vector batch{described(uuid(1), "two", 2, 2), created(uuid(2), "new", 3)};
  auto r = m.apply(batch, 3);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == projection_errc::unavailable);
  CHECK_FALSE(m.connected());
  require_ok(m.connect());
  require_ok(m.apply(batch, 3));
  require_ok(m.apply(batch, 3)); // and once more: still applied once
  CHECK(require_value(m.get(uuid(1))).row == todo_row{uuid(1), "two", "Created", 2});
  CHECK(require_value(m.get(uuid(2))).row == todo_row{uuid(2), "new", "Created", 1});
  CHECK(require_value(m.checkpoint()) == 3);
}

} // namespace

TEST_CASE("a terminated connection yields unavailable and connect recovers",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.model_dsn(), s.table};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));

  auto terminate = [&] {
    // Materialized first so that only this test's session can be terminated; the
    // two-argument form waits until the backend is gone.
    CHECK(s.db.scalar("WITH victims AS MATERIALIZED ("
                      "SELECT pid FROM pg_stat_activity WHERE application_name = $1) "
                      "SELECT count(*) FROM victims WHERE pg_terminate_backend(pid, 5000)",
                      {s.app})
          == "1");
  };

  SECTION("on a read") {
    terminate();
    auto r = m.get(uuid(1));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == projection_errc::unavailable);
    CHECK_FALSE(m.connected());
    CHECK(m.list(query(10)).error().code == projection_errc::unavailable);
    require_ok(m.connect());
    CHECK(m.connected());
    CHECK(require_value(m.get(uuid(1))).row.description == "one");
  }

  SECTION("on apply, which the caller retries whole after reconnecting") {
    terminate();
    check_batch_retried_whole(m);
  }
}

namespace {

/// Freezes one PostgreSQL backend (SIGSTOP) as a hung server or a network path
/// that stops forwarding would; thaws it (SIGCONT) on destruction. The test
/// runs as root, the backend as `postgres`.
struct frozen_backend {
  pid_t pid;
  explicit frozen_backend(pid_t p) : pid(p) { REQUIRE(::kill(pid, SIGSTOP) == 0); }
  ~frozen_backend() { ::kill(pid, SIGCONT); }
  frozen_backend(const frozen_backend&) = delete;
  frozen_backend& operator=(const frozen_backend&) = delete;
};

} // namespace

TEST_CASE("a PostgreSQL that stops answering fails the call after the query timeout with "
          "unavailable, and a new connection serves the next one",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  scratch s;
  todo_read_model m{s.model_dsn(), s.table, {"unused: the DSN names the session", 300ms, ""}};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  auto pids = s.backends();
  REQUIRE(pids.size() == 1);
  frozen_backend frozen{pids.front()};
  SECTION("a read") {
    auto began = clock::now();
    auto r = m.get(uuid(1));
    auto took = clock::now() - began;
    REQUIRE_FALSE(r);
    CHECK(r.error().code == projection_errc::unavailable);
    INFO(r.error().detail);
    CHECK(r.error().detail.find("did not answer within 300 ms (postgres.query-timeout-ms)")
          != std::string::npos);
    CHECK(took >= 300ms);
    CHECK(took < 3s);
    CHECK_FALSE(m.connected());
  }
  SECTION("the status probe, whose own limit the error names (not the query timeout)") {
    auto r = m.probe(200ms);
    REQUIRE_FALSE(r);
    INFO(r.error().detail);
    CHECK(r.error().detail.find("did not answer within 200 ms (the limit of the status probe")
          != std::string::npos);
    CHECK(r.error().detail.find("postgres.query-timeout-ms") == std::string::npos);
    CHECK_FALSE(m.connected());
  }
  SECTION("an apply, retried whole on the new connection") {
    check_batch_retried_whole(m);
  }
  // The frozen backend is still stopped: the new session does not need it.
  require_ok(m.connect());
  CHECK(require_value(m.get(uuid(1))).position >= 1);
  CHECK(s.backends().size() == 2);
}

namespace {

/// Sets `flag` after `delay`, on a thread of its own.
struct set_later {
  std::thread t;
  set_later(std::atomic<bool>& flag, std::chrono::milliseconds delay)
    : t([&flag, delay] {
        std::this_thread::sleep_for(delay);
        flag = true;
      }) {}
  ~set_later() { t.join(); }
};

} // namespace

TEST_CASE("connecting to a server that never answers gives up at connect_timeout, or soon "
          "after the stop flag",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  silent_listener host;
  auto dsn = "host=127.0.0.1 port=" + std::to_string(host.port())
             + " dbname=x user=postgres connect_timeout=2";
  SECTION("connect_timeout") {
    auto began = clock::now();
    auto c = pg::connect(dsn);
    auto took = clock::now() - began;
    REQUIRE_FALSE(c);
    INFO(c.error().message);
    CHECK(c.error().connection_lost);
    CHECK(c.error().message.find("timed out") != std::string::npos);
    CHECK(took >= 1900ms);
    CHECK(took < 3s);
  }
  SECTION("the stop flag") {
    std::atomic<bool> stop{false};
    set_later later{stop, 300ms};
    auto began = clock::now();
    auto c = pg::connect(dsn, "eventsd", &stop);
    auto took = clock::now() - began;
    REQUIRE_FALSE(c);
    CHECK(c.error().message == "the server is stopping");
    CHECK(took >= 300ms);
    CHECK(took < 1500ms); // not at the 2 s connect_timeout
  }
}

TEST_CASE("a DSN naming several hosts connects to the next one when the first never answers",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  silent_listener first;
  auto dsn = test_dsn();
  std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> parsed{
    PQconninfoParse(dsn.c_str(), nullptr), &PQconninfoFree};
  std::string host = "127.0.0.1", port = "5432";
  for (auto* o = parsed.get(); o != nullptr && o->keyword != nullptr; ++o) {
    if (o->val != nullptr && std::string_view{o->keyword} == "host")
      host = o->val;
    if (o->val != nullptr && std::string_view{o->keyword} == "port")
      port = o->val;
  }
  // Later keywords win in a conninfo string.
  auto both = dsn + " host=127.0.0.1," + host + " port=" + std::to_string(first.port()) + ","
              + port + " connect_timeout=2";
  auto began = clock::now();
  auto c = pg::connect(both);
  auto took = clock::now() - began;
  INFO((c ? std::string{"connected"} : c.error().message));
  REQUIRE(c);
  CHECK(PQport(c->get()) == port);
  CHECK(took >= 1900ms);
  CHECK(took < 5s);
}

TEST_CASE("a statement waiting for a PostgreSQL that stopped answering ends soon after the "
          "stop flag, long before the query timeout",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  scratch s;
  std::atomic<bool> stop{false};
  todo_read_model m{s.model_dsn(), s.table, {"unused: the DSN names the session", 30s, "", &stop}};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  auto pids = s.backends();
  REQUIRE(pids.size() == 1);
  frozen_backend frozen{pids.front()};
  set_later later{stop, 300ms};
  auto began = clock::now();
  auto r = m.get(uuid(1));
  auto took = clock::now() - began;
  REQUIRE_FALSE(r);
  CHECK(r.error().code == projection_errc::unavailable);
  CHECK(r.error().detail.find("stopping") != std::string::npos);
  CHECK(took >= 300ms);
  CHECK(took < 5s); // not at the 30 s query timeout
  CHECK_FALSE(m.connected());
}

TEST_CASE("bind_store claims a new checkpoint for its store and answers it; another store's "
          "read model is refused as diverged, by bind_store and by reads",
          "[projections][postgres]") {
  scratch s;
  todo_read_model mine{s.dsn, s.table, {"eventsd test", 10s, "store-a"}};
  require_ok(mine.connect());
  CHECK(require_value(mine.bind_store(0)) == 0);
  require_ok(mine.apply(std::vector{created(uuid(1), "one", 1), created(uuid(2), "two", 2)}, 2));
  CHECK(require_value(mine.bind_store(2)) == 2);
  CHECK(s.db.scalar("SELECT store FROM eventsd_checkpoints WHERE name = $1", {s.table})
        == "store-a");

  todo_read_model other{s.dsn, s.table, {"eventsd test", 10s, "store-b"}};
  require_ok(other.connect());
  auto bound = other.bind_store(100);
  REQUIRE_FALSE(bound);
  CHECK(bound.error().code == projection_errc::diverged);
  INFO(bound.error().detail);
  CHECK(bound.error().detail.find("another event store (store-a") != std::string::npos);
  CHECK(bound.error().detail.find("rebuild") != std::string::npos);
  CHECK(other.get(uuid(1)).error().code == projection_errc::diverged);
  CHECK(other.list(query(10)).error().code == projection_errc::diverged);
  // Unchecked models (no store given) and the owner still read it.
  todo_read_model unchecked{s.dsn, s.table};
  require_ok(unchecked.connect());
  CHECK(require_value(unchecked.get(uuid(1))).row.description == "one");
  CHECK(require_value(mine.list(query(10))).items.size() == 2);
}

TEST_CASE("bind_store refuses a checkpoint ahead of the log and marks it, so that it stays "
          "refused once the log grows past it, until reset (a rebuild) clears it",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table, {"eventsd test", 10s, "store-a"}};
  require_ok(m.connect());
  CHECK(require_value(m.bind_store(5)) == 0);
  require_ok(m.apply(std::vector{created(uuid(1), "one", 4)}, 5));

  auto ahead = m.bind_store(3); // the log lost events 4 and 5
  REQUIRE_FALSE(ahead);
  CHECK(ahead.error().code == projection_errc::diverged);
  INFO(ahead.error().detail);
  CHECK(ahead.error().detail.find("position 5") != std::string::npos);
  CHECK(ahead.error().detail.find("head 3") != std::string::npos);
  // Still refused when new events take the log past the checkpoint: those
  // positions are other events than the ones the read model holds.
  CHECK(m.bind_store(10).error().code == projection_errc::diverged);
  CHECK(m.get(uuid(1)).error().code == projection_errc::diverged);

  // A checkpoint of no store yet that is ahead of the log (a read model kept
  // from an earlier store, say) is refused the same way.
  todo_read_model fresh{s.dsn, s.another_table("fresh"), {"eventsd test", 10s, "store-b"}};
  require_ok(fresh.connect());
  require_ok(fresh.apply(std::vector{created(uuid(2), "two", 7)}, 7));
  CHECK(fresh.bind_store(0).error().code == projection_errc::diverged);

  require_ok(m.reset());
  CHECK(require_value(m.bind_store(10)) == 0);
  CHECK(s.db.scalar("SELECT store FROM eventsd_checkpoints WHERE name = $1", {s.table})
        == "store-a");
}

TEST_CASE("bind_store refuses a checkpoint whose event is not the log's event at its position "
          "(a log restored from an older copy that grew past it) and marks it; the same event "
          "binds, and so does a checkpoint of no known event",
          "[projections][postgres]") {
  scratch s;
  todo_read_model m{s.dsn, s.table, {"eventsd test", 10s, "store-a"}};
  require_ok(m.connect());
  CHECK(require_value(m.bind_store(0)) == 0);
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1, "event-1"));
  require_ok(m.apply(std::vector{created(uuid(2), "two", 2)}, 2, "event-2"));
  CHECK(s.db.scalar("SELECT last_event FROM eventsd_checkpoints WHERE name = $1", {s.table})
        == "2:event-2");
  auto log_with = [](std::string id) {
    return [id](uint64_t position) -> std::optional<std::string> {
      return position == 2 ? std::optional{id} : std::nullopt;
    };
  };
  // The log has the checkpoint's event where it says, or cannot tell.
  CHECK(require_value(m.bind_store(5, log_with("event-2"))) == 2);
  // An id kept for another position (an older binary moved the checkpoint
  // without it) is not compared.
  s.db.query("UPDATE eventsd_checkpoints SET last_event = '1:event-1' WHERE name = $1",
             {s.table});
  CHECK(require_value(m.bind_store(5, log_with("not event-1"))) == 2);
  s.db.query("UPDATE eventsd_checkpoints SET last_event = '2:event-2' WHERE name = $1",
             {s.table});
  CHECK(require_value(m.bind_store(5, [](uint64_t) { return std::optional<std::string>{}; }))
        == 2);
  // Another event at position 2: the log is not the one the read model folds.
  auto other = m.bind_store(5, log_with("event-2-of-a-restored-log"));
  REQUIRE_FALSE(other);
  CHECK(other.error().code == projection_errc::diverged);
  INFO(other.error().detail);
  CHECK(other.error().detail.find("event-2-of-a-restored-log") != std::string::npos);
  // Marked: refused from then on, whatever the log says, until a rebuild.
  CHECK(m.bind_store(5, log_with("event-2")).error().code == projection_errc::diverged);
  CHECK(m.get(uuid(1)).error().code == projection_errc::diverged);
  require_ok(m.reset());
  CHECK(require_value(m.bind_store(5, log_with("anything"))) == 0);
}

TEST_CASE("a table rebuilt by another store and swapped in is that store's: the projection "
          "that applied to it before is refused from its next apply on, the rebuilding store "
          "binds it",
          "[projections][postgres]") {
  scratch s;
  todo_read_model a{s.dsn, s.table, {"eventsd test", 10s, "store-a"}};
  require_ok(a.connect());
  CHECK(require_value(a.bind_store(0)) == 0);
  require_ok(a.apply(std::vector{created(uuid(1), "a one", 1)}, 1));

  // Store b rebuilds into a fresh table and swaps it in (a misconfiguration:
  // two stores on one read model).
  todo_read_model rebuild{s.dsn, s.another_table("rebuild"), {"eventsd test", 10s, "store-b"}};
  require_ok(rebuild.connect());
  require_ok(rebuild.reset());
  require_ok(rebuild.apply(std::vector{created(uuid(2), "b one", 1), created(uuid(3), "b two", 2)}, 2));
  require_ok(rebuild.swap_into(s.table));
  CHECK(s.db.scalar("SELECT store FROM eventsd_checkpoints WHERE name = $1", {s.table})
        == "store-b");

  auto applied = a.apply(std::vector{created(uuid(4), "a two", 3)}, 3);
  REQUIRE_FALSE(applied);
  CHECK(applied.error().code == projection_errc::diverged);
  CHECK(a.bind_store(3).error().code == projection_errc::diverged);
  CHECK(a.get(uuid(2)).error().code == projection_errc::diverged);
  auto count_sql = "SELECT count(*) FROM " + s.table + " WHERE id = $1";
  CHECK(s.db.scalar(count_sql.c_str(), {uuid(4)}) == "0");

  todo_read_model b{s.dsn, s.table, {"eventsd test", 10s, "store-b"}};
  require_ok(b.connect());
  CHECK(require_value(b.bind_store(2)) == 2);
  require_ok(b.apply(std::vector{created(uuid(5), "b three", 3)}, 3));
  CHECK(require_value(b.get(uuid(5))).row.description == "b three");
}

TEST_CASE("a statement that waits past the query timeout is cancelled by the server and the "
          "session goes on: while a lock blocks every read, sessions do not pile up",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  scratch s;
  todo_read_model m{s.model_dsn(), s.table, {"unused", 300ms, ""}};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  admin locker{s.dsn};
  locker.query("BEGIN");
  auto lock = "LOCK TABLE " + s.table + " IN ACCESS EXCLUSIVE MODE";
  locker.query(lock.c_str());
  for (int i = 0; i < 4; ++i) {
    auto began = clock::now();
    auto r = m.get(uuid(1));
    REQUIRE_FALSE(r);
    INFO(r.error().detail);
    CHECK(r.error().detail.find("statement timeout") != std::string::npos);
    CHECK(clock::now() - began < 3s); // the 300 ms timeout, not the lock's end
    CHECK(m.connected());
  }
  CHECK(s.backends().size() == 1); // abandoned sessions would each still wait for the lock
  locker.query("ROLLBACK");
  CHECK(require_value(m.get(uuid(1))).row.description == "one");
}

TEST_CASE("with a lock_timeout a statement waiting for a lock fails after it, well before the "
          "query timeout, and the session goes on",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  scratch s;
  connection_options o{"unused", 10s, ""};
  o.lock_timeout = 300ms;
  todo_read_model m{s.model_dsn(), s.table, o};
  require_ok(m.connect());
  require_ok(m.apply(std::vector{created(uuid(1), "one", 1)}, 1));
  admin locker{s.dsn};
  locker.query("BEGIN");
  auto lock = "LOCK TABLE " + s.table + " IN ACCESS EXCLUSIVE MODE";
  locker.query(lock.c_str());
  auto began = clock::now();
  auto r = m.get(uuid(1));
  REQUIRE_FALSE(r);
  INFO(r.error().detail);
  CHECK(r.error().detail.find("lock timeout") != std::string::npos);
  CHECK(clock::now() - began < 5s); // the statement timeout (9 s) did not end it
  CHECK(m.connected());
  locker.query("ROLLBACK");
  CHECK(require_value(m.get(uuid(1))).row.description == "one");
}

TEST_CASE("connect does not wait for a transaction that read the checkpoints; a connect whose "
          "set-up fails leaves the model not connected, and the next connect recovers",
          "[projections][postgres]") {
  using clock = std::chrono::steady_clock;
  scratch s;
  {
    todo_read_model first{s.model_dsn(), s.table, {"unused", 5s, ""}};
    require_ok(first.connect()); // the schema exists from here on
  }
  admin locker{s.dsn};
  locker.query("BEGIN");
  locker.query("SELECT count(*) FROM eventsd_checkpoints");
  todo_read_model m{s.model_dsn(), s.table, {"unused", 5s, ""}};
  auto began = clock::now();
  require_ok(m.connect());
  CHECK(clock::now() - began < 1s);
  locker.query("ROLLBACK");

  todo_read_model blocked{s.model_dsn(), s.table, {"unused", 5s, ""}};
  locker.query("BEGIN");
  locker.query("LOCK TABLE eventsd_checkpoints IN ACCESS EXCLUSIVE MODE");
  auto r = blocked.connect();
  REQUIRE_FALSE(r);
  INFO(r.error().detail);
  CHECK(r.error().detail.find("lock timeout") != std::string::npos);
  CHECK_FALSE(blocked.connected());
  auto get = blocked.get(uuid(1));
  REQUIRE_FALSE(get);
  CHECK(get.error().code == projection_errc::unavailable);
  locker.query("ROLLBACK");
  require_ok(blocked.connect());
  CHECK(blocked.connected());
  CHECK(require_value(blocked.checkpoint()) == 0);
}
