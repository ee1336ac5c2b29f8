// Thread-safety: one instance, one connection, one thread at a time (see the header).
#include "projections/todo_read_model.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <limits>
#include <thread>
#include <unordered_map>
#include <utility>

#include "core/uuid.hpp"
#include "projections/pg.hpp"

namespace eventsd::projections {

const char* to_string(projection_errc x) {
  switch (x) {
    case projection_errc::unavailable:
      return "unavailable";
    case projection_errc::not_found:
      return "not_found";
    case projection_errc::query_failed:
      return "query_failed";
    case projection_errc::invalid_cursor:
      return "invalid_cursor";
    case projection_errc::timeout:
      return "timeout";
    case projection_errc::diverged:
      return "diverged";
  }
  return "unknown";
}

namespace {

// ---- SQL ------------------------------------------------------------------
// `{t}` stands for the read-model table and `{u}` for the swap target; both are
// checked against [a-z_][a-z0-9_]* before they are substituted, once.

// Serializes DDL on the read model across connections and processes: concurrent
// CREATE TABLE IF NOT EXISTS can fail on pg_type's unique index.
constexpr const char* sql_schema_lock = "SELECT pg_advisory_xact_lock(7305960472135221101)";

constexpr const char* sql_create_checkpoints =
  "CREATE TABLE IF NOT EXISTS eventsd_checkpoints ("
  "name text PRIMARY KEY, position bigint NOT NULL)";

// Columns added to eventsd_checkpoints after its first version, text each:
// - `store`: the event store (event_log::store_id) the checkpoint counts
//   positions of; NULL until claimed. "diverged: ..." marks a checkpoint
//   found ahead of its log.
// - `last_event`: `<position>:<id>` of the log's event at the checkpoint's
//   position (NULL: not known): a log restored from an older copy, which then
//   grew past the checkpoint with other events, has another event there. The
//   position is kept with the id because binaries before this column move the
//   checkpoint without it: an id of another position is not compared.
// Each is altered only when missing: ALTER TABLE takes an ACCESS EXCLUSIVE
// lock even when there is nothing to add, and would queue every reader of the
// checkpoint behind any transaction that holds a lock on it.
constexpr const char* sql_add_checkpoint_columns =
  "DO $$ DECLARE c text; BEGIN "
  "FOREACH c IN ARRAY ARRAY['store', 'last_event'] LOOP "
  "IF NOT EXISTS (SELECT 1 FROM pg_attribute "
  "WHERE attrelid = 'eventsd_checkpoints'::regclass AND attname = c "
  "AND NOT attisdropped) THEN "
  "EXECUTE format('ALTER TABLE eventsd_checkpoints ADD COLUMN %I text', c); "
  "END IF; END LOOP; END $$";

// DDL waits this long for a lock and fails instead; connect() is retried.
constexpr const char* sql_ddl_lock_timeout = "SET LOCAL lock_timeout = '2s'";

constexpr const char* sql_create_table =
  "CREATE TABLE IF NOT EXISTS {t} ("
  "id uuid CONSTRAINT {t}_pkey PRIMARY KEY, description text, status text, "
  "version bigint NOT NULL, created_position bigint NOT NULL)";

constexpr const char* sql_create_created_idx =
  "CREATE INDEX IF NOT EXISTS {t}_created_idx ON {t} (created_position)";

constexpr const char* sql_create_status_idx =
  "CREATE INDEX IF NOT EXISTS {t}_status_idx ON {t} (status, created_position)";

constexpr const char* sql_insert_checkpoint =
  "INSERT INTO eventsd_checkpoints (name, position) VALUES ($1, 0) "
  "ON CONFLICT (name) DO NOTHING";

constexpr const char* sql_drop_table = "DROP TABLE IF EXISTS {t}";

// A fresh table's checkpoint belongs to the store that fills it ($2; NULL
// when not checked), so that no other store's projection claims it.
constexpr const char* sql_zero_checkpoint =
  "INSERT INTO eventsd_checkpoints (name, position, store) VALUES ($1, 0, $2) "
  "ON CONFLICT (name) DO UPDATE SET position = 0, store = EXCLUDED.store, last_event = NULL";

// swap_into: checkpoint rows are locked first, in name order, as apply() locks
// its checkpoint row before touching its table; this keeps the lock order the
// same and avoids deadlocks with a projection still applying to the target.
constexpr const char* sql_lock_two_checkpoints =
  "SELECT name FROM eventsd_checkpoints WHERE name IN ($1, $2) ORDER BY name FOR UPDATE";
// A rebuilt table has no planner statistics until autovacuum gets to it (a
// minute or more): filtered and paged reads of the swapped-in table would be
// planned blind meanwhile. ANALYZE samples a bounded number of rows.
constexpr const char* sql_analyze = "ANALYZE {t}";
constexpr const char* sql_drop_target = "DROP TABLE IF EXISTS {u}";
constexpr const char* sql_rename_table = "ALTER TABLE {t} RENAME TO {u}";
constexpr const char* sql_rename_pkey = "ALTER INDEX IF EXISTS {t}_pkey RENAME TO {u}_pkey";
constexpr const char* sql_rename_created_idx =
  "ALTER INDEX IF EXISTS {t}_created_idx RENAME TO {u}_created_idx";
constexpr const char* sql_rename_status_idx =
  "ALTER INDEX IF EXISTS {t}_status_idx RENAME TO {u}_status_idx";
constexpr const char* sql_move_checkpoint_row =
  "INSERT INTO eventsd_checkpoints (name, position, store, last_event) "
  "SELECT $2, position, store, last_event FROM eventsd_checkpoints WHERE name = $1 "
  "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, store = EXCLUDED.store, "
  "last_event = EXCLUDED.last_event";
constexpr const char* sql_delete_checkpoint_row =
  "DELETE FROM eventsd_checkpoints WHERE name = $1";

// Prepared statements (names are per connection).
constexpr const char* stmt_checkpoint = "checkpoint";
constexpr const char* sql_checkpoint = "SELECT position FROM eventsd_checkpoints WHERE name = $1";

constexpr const char* sql_set_store = "UPDATE eventsd_checkpoints SET store = $2 WHERE name = $1";

constexpr const char* stmt_lock_checkpoint = "lock_checkpoint";
constexpr const char* sql_lock_checkpoint =
  "SELECT position, store, last_event FROM eventsd_checkpoints WHERE name = $1 FOR UPDATE";

constexpr const char* stmt_upsert = "upsert_todos";
// The upsert of a folded batch, in two parts: the rows, and how they merge
// with the rows already there (apply_from puts a condition between them).
constexpr std::string_view sql_upsert_rows =
  "INSERT INTO {t} AS t (id, description, status, version, created_position) "
  "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) ";
constexpr std::string_view sql_upsert_merge =
  "ON CONFLICT (id) DO UPDATE SET "
  "description = COALESCE(EXCLUDED.description, t.description), "
  "status = COALESCE(EXCLUDED.status, t.status), "
  "version = EXCLUDED.version";

// apply()'s usual case in one statement and one round trip: the batch's rows are
// written only if the checkpoint is still where this connection last left it
// ($8) and still belongs to this store ($9, NULL when not checked), and the
// checkpoint moves to $7 in the same (implicit) transaction. The answer is 1
// when that happened, 0 when the checkpoint was elsewhere (another writer, a
// swap) and nothing was written.
constexpr const char* stmt_apply_from = "apply_from";
std::string sql_apply_from() {
  return std::string{"WITH cp AS (UPDATE eventsd_checkpoints SET position = $7::bigint, "
                     "last_event = $10 "
                     "WHERE name = $6 AND position = $8::bigint "
                     "AND ($9::text IS NULL OR store = $9) RETURNING 1), up AS ("}
         + std::string{sql_upsert_rows} + "WHERE EXISTS (SELECT FROM cp) "
         + std::string{sql_upsert_merge} + ") SELECT count(*) FROM cp";
}

constexpr const char* stmt_advance_checkpoint = "advance_checkpoint";
constexpr const char* sql_advance_checkpoint =
  "UPDATE eventsd_checkpoints SET last_event = CASE WHEN $2::bigint > position THEN $3 "
  "ELSE last_event END, position = GREATEST(position, $2::bigint) WHERE name = $1";

// The checkpoint row first (placeholder NULL id, its store in the second
// column), then the rows found; one statement, so both come from one snapshot.
constexpr const char* stmt_get_many = "get_todos";
constexpr const char* sql_get_many =
  "SELECT NULL::text, store, NULL::text, NULL::bigint, position "
  "FROM eventsd_checkpoints WHERE name = $2 "
  "UNION ALL "
  "SELECT id::text, description, status, version, NULL FROM {t} WHERE id = ANY($1::uuid[])";

// One statement, so rows and checkpoint come from one snapshot; the one-row
// outer side makes the checkpoint arrive even when the page is empty.
constexpr const char* stmt_list = "list_todos";
constexpr const char* sql_list =
  "SELECT cp.position, r.id::text, r.description, r.status, r.version, r.created_position, "
  "cp.store "
  "FROM (VALUES (1)) AS one (x) "
  "LEFT JOIN eventsd_checkpoints AS cp ON cp.name = $1 LEFT JOIN LATERAL ("
  "SELECT id, description, status, version, created_position FROM {t} "
  "WHERE created_position > $2::bigint ORDER BY created_position LIMIT $3::bigint"
  ") AS r ON true ORDER BY r.created_position";

constexpr const char* stmt_list_by_status = "list_todos_by_status";
constexpr const char* sql_list_by_status =
  "SELECT cp.position, r.id::text, r.description, r.status, r.version, r.created_position, "
  "cp.store "
  "FROM (VALUES (1)) AS one (x) "
  "LEFT JOIN eventsd_checkpoints AS cp ON cp.name = $1 LEFT JOIN LATERAL ("
  "SELECT id, description, status, version, created_position FROM {t} "
  "WHERE status = $4 AND created_position > $2::bigint "
  "ORDER BY created_position LIMIT $3::bigint"
  ") AS r ON true ORDER BY r.created_position";

// Longest table name: leaves room for "_created_idx" within PostgreSQL's 63.
constexpr size_t max_table_name = 48;

constexpr int max_attempts = 5;

std::string with_tables(std::string_view sql, std::string_view t, std::string_view u = {}) {
  std::string out;
  out.reserve(sql.size() + 4 * t.size());
  for (size_t i = 0; i < sql.size(); ++i) {
    if (sql[i] == '{' && i + 2 < sql.size() && sql[i + 2] == '}'
        && (sql[i + 1] == 't' || sql[i + 1] == 'u')) {
      out += sql[i + 1] == 't' ? t : u;
      i += 2;
    } else {
      out.push_back(sql[i]);
    }
  }
  return out;
}

std::string lowercase(std::string s) {
  for (auto& ch : s)
    if (ch >= 'A' && ch <= 'Z')
      ch = static_cast<char>(ch - 'A' + 'a');
  return s;
}

pg::failure logic_failure(std::string msg) {
  return pg::failure{false, "", std::move(msg)};
}

// Parses a cursor: decimal digits of a created_position that fits a bigint.
std::optional<int64_t> parse_cursor(std::string_view s) {
  if (s.empty() || s.size() > 19)
    return std::nullopt;
  for (char ch : s)
    if (ch < '0' || ch > '9')
      return std::nullopt;
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size())
    return std::nullopt;
  return v;
}

// The effect of a batch on one row, after folding its changes in order.
struct folded_row {
  std::string id;
  std::optional<std::string> description;
  std::optional<std::string> status;
  uint64_t version = 0;
  uint64_t created_position = 0; // first change of this id in the batch
};

} // namespace

struct todo_read_model::impl {
  std::string dsn;
  std::string table;
  connection_options copts;
  bool table_valid;
  /// This table's SQL, built once with the name substituted.
  struct table_sql {
    std::string create_table, create_created_idx, create_status_idx, drop_table;
    std::string upsert, apply_from, get_many, list, list_by_status;
  } sql;
  pg::conn_ptr conn;
  bool ready = false; // schema ensured and statements prepared on `conn`
  /// The checkpoint as this connection last read or wrote it; unset when it
  /// may have changed since (failures, reset, swap).
  std::optional<uint64_t> known_checkpoint;

  impl(std::string dsn_in, std::string table_in, connection_options copts_in)
    : dsn(std::move(dsn_in)),
      table(std::move(table_in)),
      copts(std::move(copts_in)),
      table_valid(pg::is_plain_identifier(table, max_table_name)
                  && table != "eventsd_checkpoints") {
    if (!table_valid)
      return;
    sql.create_table = with_tables(sql_create_table, table);
    sql.create_created_idx = with_tables(sql_create_created_idx, table);
    sql.create_status_idx = with_tables(sql_create_status_idx, table);
    sql.drop_table = with_tables(sql_drop_table, table);
    sql.upsert = with_tables(std::string{sql_upsert_rows} + std::string{sql_upsert_merge}, table);
    sql.apply_from = with_tables(sql_apply_from(), table);
    sql.get_many = with_tables(sql_get_many, table);
    sql.list = with_tables(sql_list, table);
    sql.list_by_status = with_tables(sql_list_by_status, table);
  }

  PGconn* c() const { return conn.get(); }

  /// The connection with the deadline of each call on it.
  pg::session s() const { return {conn.get(), copts.query_timeout, copts.cancel}; }

  /// Turns a libpq failure into a projection error; forgets a broken
  /// connection so that connected() says so and connect() opens a new one.
  projection_error fail(const pg::failure& f) {
    known_checkpoint.reset();
    if (f.connection_lost) {
      conn.reset();
      ready = false;
      return {projection_errc::unavailable, f.message};
    }
    if (f.sqlstate.empty())
      return {projection_errc::query_failed, f.message};
    return {projection_errc::query_failed, f.sqlstate + ": " + f.message};
  }

  std::optional<projection_error> require_ready() const {
    if (!table_valid)
      return projection_error{projection_errc::query_failed, "invalid table name: " + table};
    if (!pg::is_up(c()) || !ready)
      return projection_error{projection_errc::unavailable, "not connected"};
    return std::nullopt;
  }

  /// This model's store as a statement parameter (NULL: not checked).
  pg::param store_param() const {
    return copts.store.empty() ? pg::param{} : pg::param{copts.store};
  }

  /// Set by apply_locked when the checkpoint turned out to be another store's.
  std::optional<projection_error> refused;

  /// A read-model answer whose checkpoint row names `stored` as its store:
  /// refused when that is not the store this model must belong to.
  std::optional<projection_error> check_store(std::string_view stored) const {
    if (copts.store.empty() || stored.empty() || stored == copts.store)
      return std::nullopt;
    return diverged(stored);
  }

  projection_error diverged(std::string_view stored) const {
    const char* rebuild = "; rebuild it: POST /admin/projections/todos/rebuild, or "
                          "eventsd --rebuild=todos";
    if (stored.starts_with("diverged: "))
      return {projection_errc::diverged,
              "the read model " + std::string{stored.substr(10)} + rebuild};
    return {projection_errc::diverged, "the read model was built from another event store ("
                                         + std::string{stored} + ", this one is "
                                         + copts.store + ")" + rebuild};
  }

  pg::outcome<void> run(const std::string& sql) { return run(sql.c_str()); }

  pg::outcome<void> run(const char* sql) {
    auto r = pg::exec(s(), sql);
    if (!r)
      return r.error();
    return {};
  }

  pg::outcome<void> run(const char* sql, std::initializer_list<pg::param> ps) {
    auto r = pg::exec(s(), sql, std::span{ps.begin(), ps.size()});
    if (!r)
      return r.error();
    return {};
  }

  /// Runs `body` between BEGIN and COMMIT, retrying the whole transaction on
  /// serialization failures and deadlocks. A COMMIT whose outcome is unknown
  /// (connection lost) is never retried here.
  template <class F>
  pg_result<void> in_transaction(F&& body) {
    for (int attempt = 1;; ++attempt) {
      auto r = attempt_transaction(body);
      if (r)
        return {};
      if (r.error().retryable() && attempt < max_attempts) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5 * attempt));
        continue;
      }
      return fail(r.error());
    }
  }

  template <class F>
  pg::outcome<void> attempt_transaction(F& body) {
    if (PQtransactionStatus(c()) != PQTRANS_IDLE)
      pg::exec(s(), "ROLLBACK"); // leftover of an earlier failure; the result does not matter
    if (auto r = run("BEGIN"); !r)
      return r;
    pg::outcome<void> r = body();
    if (r)
      r = run("COMMIT");
    if (!r && !r.error().connection_lost && PQtransactionStatus(c()) != PQTRANS_IDLE)
      pg::exec(s(), "ROLLBACK");
    return r;
  }

  pg::outcome<void> create_schema(bool drop_first) {
    for (const char* ddl :
         {sql_ddl_lock_timeout, sql_schema_lock, sql_create_checkpoints,
          sql_add_checkpoint_columns})
      if (auto r = run(ddl); !r)
        return r;
    if (drop_first)
      if (auto r = run(sql.drop_table); !r)
        return r;
    for (const std::string* ddl : {&sql.create_table, &sql.create_created_idx,
                                   &sql.create_status_idx})
      if (auto r = run(*ddl); !r)
        return r;
    if (drop_first)
      return run(sql_zero_checkpoint, {table, store_param()});
    return run(sql_insert_checkpoint, {table});
  }

  pg::outcome<void> prepare_all() {
    struct statement {
      const char* name;
      const char* sql;
      int n_params;
    };
    const statement statements[] = {
      {stmt_checkpoint, sql_checkpoint, 1},
      {stmt_lock_checkpoint, sql_lock_checkpoint, 1},
      {stmt_upsert, sql.upsert.c_str(), 5},
      {stmt_advance_checkpoint, sql_advance_checkpoint, 3},
      {stmt_apply_from, sql.apply_from.c_str(), 10},
      {stmt_get_many, sql.get_many.c_str(), 2},
      {stmt_list, sql.list.c_str(), 3},
      {stmt_list_by_status, sql.list_by_status.c_str(), 4},
    };
    for (const auto& st : statements)
      if (auto r = pg::prepare(s(), st.name, st.sql, st.n_params); !r)
        return r;
    return {};
  }

  /// The batch's changes past `after`, folded to one row per id, as the five
  /// array parameters of the upsert (id, description, status, version,
  /// created_position).
  struct row_arrays {
    std::string ids = "{", descriptions = "{", statuses = "{", versions = "{", created = "{";
  };
  static row_arrays fold(std::span<const todo_change> changes, uint64_t after) {
    std::vector<folded_row> rows;
    std::unordered_map<std::string, size_t> index_of;
    for (const auto& ch : changes) {
      if (ch.position <= after)
        continue;
      auto id = lowercase(ch.id);
      auto [it, inserted] = index_of.try_emplace(id, rows.size());
      if (inserted)
        rows.push_back(folded_row{std::move(id), {}, {}, 0, ch.position});
      auto& row = rows[it->second];
      if (ch.description)
        row.description = ch.description;
      if (ch.status)
        row.status = ch.status;
      row.version = ch.version;
    }
    row_arrays a;
    auto all = {&a.ids, &a.descriptions, &a.statuses, &a.versions, &a.created};
    for (size_t i = 0; i < rows.size(); ++i) {
      if (i > 0)
        for (auto* s : all)
          s->push_back(',');
      pg::append_array_element(a.ids, std::string_view{rows[i].id});
      pg::append_array_element(a.descriptions, rows[i].description);
      pg::append_array_element(a.statuses, rows[i].status);
      a.versions += std::to_string(rows[i].version);
      a.created += std::to_string(rows[i].created_position);
    }
    for (auto* s : all)
      s->push_back('}');
    return a;
  }

  /// apply() when the checkpoint is where this connection last saw it: one
  /// statement. True when applied; false when the checkpoint had moved (nothing
  /// written; the caller takes the locking path).
  pg::outcome<bool> apply_from_known(std::span<const todo_change> changes,
                                     uint64_t new_checkpoint, pg::param last_event) {
    auto a = fold(changes, *known_checkpoint);
    auto position = std::to_string(new_checkpoint);
    auto expected = std::to_string(*known_checkpoint);
    const pg::param ps[] = {a.ids,    a.descriptions, a.statuses, a.versions,    a.created,
                            table,    position,       expected,   store_param(), last_event};
    auto r = pg::exec_prepared(s(), stmt_apply_from, ps);
    if (!r)
      return r.error();
    auto applied = pg::to_u64(r->get(), 0, 0);
    return applied && *applied == 1;
  }

  /// apply() in a transaction that locks the checkpoint row first and skips
  /// the changes it already covers. Sets `locked_checkpoint` to the
  /// checkpoint after the batch.
  pg::outcome<void> apply_locked(std::span<const todo_change> changes, uint64_t new_checkpoint,
                                 pg::param last_event, uint64_t& locked_checkpoint) {
    const pg::param name[] = {table};
    auto locked = pg::exec_prepared(s(), stmt_lock_checkpoint, name);
    if (!locked)
      return locked.error();
    if (PQntuples(locked->get()) != 1)
      return logic_failure("no checkpoint row for table " + table);
    auto stored = pg::to_u64(locked->get(), 0, 0);
    if (!stored)
      return logic_failure("unreadable checkpoint for table " + table);
    // Another store's since this connection bound it (its rebuild swapped in):
    // applying this store's events to it would mix two logs.
    if (auto e = check_store(pg::text(locked->get(), 0, 1))) {
      refused = std::move(e);
      return logic_failure(refused->detail);
    }

    auto a = fold(changes, *stored);
    if (a.ids != "{}") {
      const pg::param ps[] = {a.ids, a.descriptions, a.statuses, a.versions, a.created};
      if (auto r = pg::exec_prepared(s(), stmt_upsert, ps); !r)
        return r.error();
    }

    auto position = std::to_string(new_checkpoint);
    const pg::param ps[] = {table, position, last_event};
    if (auto r = pg::exec_prepared(s(), stmt_advance_checkpoint, ps); !r)
      return r.error();
    locked_checkpoint = std::max(*stored, new_checkpoint);
    return {};
  }

  pg::outcome<void> swap_once(const std::string& target) {
    if (auto r = run(sql_schema_lock); !r)
      return r;
    if (auto r = run(sql_lock_two_checkpoints, {table, target}); !r)
      return r;
    for (const char* ddl : {sql_drop_target, sql_rename_table, sql_rename_pkey,
                            sql_rename_created_idx, sql_rename_status_idx})
      if (auto r = run(with_tables(ddl, table, target)); !r)
        return r;
    const pg::param ps[] = {table, target};
    auto moved = pg::exec(s(), sql_move_checkpoint_row, ps);
    if (!moved)
      return moved.error();
    if (std::string_view{PQcmdTuples(moved->get())} != "1")
      return logic_failure("no checkpoint row for table " + table);
    return run(sql_delete_checkpoint_row, {table});
  }
};

todo_read_model::todo_read_model(std::string dsn, std::string table, connection_options copts)
  : impl_(std::make_unique<impl>(std::move(dsn), std::move(table), std::move(copts))) {
}

todo_read_model::~todo_read_model() = default;

pg_result<void> todo_read_model::connect() {
  auto& d = *impl_;
  if (!d.table_valid)
    return projection_error{projection_errc::query_failed, "invalid table name: " + d.table};
  if (pg::is_up(d.c()) && d.ready)
    return {};
  d.ready = false;
  d.conn.reset();
  d.known_checkpoint.reset();
  auto c = pg::connect(d.dsn, d.copts.application_name.c_str(), d.copts.cancel);
  if (!c)
    return d.fail(c.error());
  d.conn = std::move(*c);
  if (auto ms = d.copts.query_timeout.count(); ms > 0) {
    // The server gives up a little before this client does: a statement that
    // waits too long (for a lock, say) is cancelled and the session goes on,
    // instead of being abandoned at the deadline with its backend still
    // waiting — sessions would pile up while the reason lasts. The client's
    // deadline remains for a server that does not answer at all.
    auto server_ms = ms - std::min<int64_t>(ms / 10, 1000);
    auto set = "SET statement_timeout = " + std::to_string(std::max<int64_t>(server_ms, 1));
    if (auto r = pg::exec(d.s(), set.c_str()); !r)
      return d.fail(r.error());
    // PostgreSQL 14 and later also notice a client gone mid-statement; older
    // servers refuse the setting, which changes nothing else.
    pg::exec(d.s(), "SET client_connection_check_interval = 1000");
  }
  if (auto ms = d.copts.lock_timeout.count(); ms > 0) {
    auto set = "SET lock_timeout = " + std::to_string(ms);
    if (auto r = pg::exec(d.s(), set.c_str()); !r)
      return d.fail(r.error());
  }
  // A connection whose set-up failed is not kept: connected() would say
  // it is up, and nothing would call connect() again.
  auto set_up = [&]() -> pg_result<void> {
    if (auto r = d.in_transaction([&] { return d.create_schema(false); }); !r)
      return r;
    if (auto r = d.prepare_all(); !r)
      return d.fail(r.error());
    return {};
  };
  if (auto r = set_up(); !r) {
    d.conn.reset();
    return r;
  }
  d.ready = true;
  return {};
}

bool todo_read_model::connected() const {
  return pg::is_up(impl_->c()) && impl_->ready;
}

pg_result<void> todo_read_model::probe(std::chrono::milliseconds deadline) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  pg::session s{d.c(), deadline, d.copts.cancel,
                "the limit of the status probe for /readyz and /admin/projections"};
  if (auto r = pg::exec(s, "SELECT 1"); !r)
    return d.fail(r.error());
  return {};
}

pg_result<uint64_t> todo_read_model::checkpoint() {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  const pg::param ps[] = {d.table};
  auto r = pg::exec_prepared(d.s(), stmt_checkpoint, ps);
  if (!r)
    return d.fail(r.error());
  if (PQntuples(r->get()) == 0)
    return uint64_t{0};
  if (auto v = pg::to_u64(r->get(), 0, 0)) {
    d.known_checkpoint = *v;
    return *v;
  }
  return projection_error{projection_errc::query_failed, "unreadable checkpoint"};
}

namespace {
/// The event id of a `last_event` column (`<position>:<id>`, see
/// sql_add_checkpoint_columns) when it is of `position`; empty otherwise.
std::string event_of_tag(std::string_view tagged, uint64_t position) {
  auto colon = tagged.find(':');
  if (colon == std::string_view::npos || tagged.substr(0, colon) != std::to_string(position))
    return {};
  return std::string{tagged.substr(colon + 1)};
}
} // namespace

pg_result<std::optional<todo_read_model::checkpoint_row>>
todo_read_model::checkpoint_of(std::string_view table) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  const pg::param ps[] = {table};
  auto r = pg::exec(d.s(),
                    "SELECT position, store, to_regclass($1) IS NOT NULL, last_event "
                    "FROM eventsd_checkpoints WHERE name = $1",
                    ps);
  if (!r)
    return d.fail(r.error());
  if (PQntuples(r->get()) == 0)
    return std::optional<checkpoint_row>{};
  auto position = pg::to_u64(r->get(), 0, 0);
  if (!position)
    return projection_error{projection_errc::query_failed, "unreadable checkpoint"};
  return std::optional{checkpoint_row{*position, std::string{pg::text(r->get(), 0, 1)},
                                      pg::text(r->get(), 0, 2) == "t",
                                      event_of_tag(pg::text(r->get(), 0, 3), *position)}};
}

pg_result<uint64_t> todo_read_model::bind_store(
  uint64_t head, const std::function<std::optional<std::string>(uint64_t)>& event_at) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  uint64_t position = 0;
  std::optional<projection_error> refused;
  auto r = d.in_transaction([&]() -> pg::outcome<void> {
    refused.reset();
    const pg::param name[] = {d.table};
    auto row = pg::exec_prepared(d.s(), stmt_lock_checkpoint, name);
    if (!row)
      return row.error();
    if (PQntuples(row->get()) != 1)
      return logic_failure("no checkpoint row for table " + d.table);
    position = pg::to_u64(row->get(), 0, 0).value_or(0);
    std::string stored{pg::text(row->get(), 0, 1)};
    if (!stored.empty() && stored != d.copts.store) {
      refused = d.diverged(stored);
      return {};
    }
    auto last_event = event_of_tag(pg::text(row->get(), 0, 2), position);
    if (position <= head && position > 0 && !last_event.empty() && event_at) {
      // Behind the head, but is it this log's past? A log restored from an
      // older copy may have grown past the checkpoint with other events.
      if (auto actual = event_at(position); actual && *actual != last_event) {
        auto mark = "diverged: at position " + std::to_string(position) + " names event "
                    + last_event + ", where the event log of store " + d.copts.store
                    + " has event " + *actual
                    + ": the log lost events (an older copy restored, say), or the read model "
                      "was made from another store";
        refused = d.diverged(mark);
        return d.run(sql_set_store, {d.table, mark});
      }
    }
    if (position <= head) {
      if (!stored.empty())
        return {};
      return d.run(sql_set_store, {d.table, d.copts.store});
    }
    auto mark = "diverged: at position " + std::to_string(position)
                + " was found ahead of the event log (head " + std::to_string(head)
                + ") of store " + d.copts.store
                + ": the log lost events, or the read model was made from another store";
    refused = d.diverged(mark);
    return d.run(sql_set_store, {d.table, mark});
  });
  if (!r)
    return r.error();
  if (refused)
    return *refused;
  d.known_checkpoint = position;
  return position;
}

pg_result<void> todo_read_model::apply(std::span<const todo_change> changes,
                                       uint64_t new_checkpoint, std::string_view last_event) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  auto tagged = std::to_string(new_checkpoint) + ":" + std::string{last_event};
  auto last = last_event.empty() ? pg::param{} : pg::param{tagged};
  if (d.known_checkpoint && new_checkpoint > *d.known_checkpoint) {
    auto fast = d.apply_from_known(changes, new_checkpoint, last);
    if (fast && *fast) {
      d.known_checkpoint = new_checkpoint;
      return {};
    }
    if (!fast && fast.error().connection_lost)
      return d.fail(fast.error());
    // The checkpoint moved, or the statement failed (e.g. a deadlock with a
    // swap, which locks the checkpoint rows before the tables, while this
    // statement holds the table first): the locking path decides.
  }
  uint64_t after = 0;
  d.refused.reset();
  auto r = d.in_transaction(
    [&] { return d.apply_locked(changes, new_checkpoint, last, after); });
  if (r.ok())
    d.known_checkpoint = after;
  else if (d.refused)
    return *std::exchange(d.refused, std::nullopt);
  return r;
}

pg_result<todo_answer> todo_read_model::get(std::string_view id) {
  const std::string ids[] = {std::string{id}};
  auto r = get_many(ids);
  if (!r.ok())
    return r.error();
  if (!r->rows[0])
    return projection_error{projection_errc::not_found, "no todo " + ids[0]};
  return todo_answer{std::move(*r->rows[0]), r->position};
}

pg_result<todo_batch> todo_read_model::get_many(std::span<const std::string> ids) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  todo_batch batch;
  batch.rows.resize(ids.size());
  // Ids that are not UUIDs cannot be in the table; left out of the array,
  // they cannot make PostgreSQL refuse the whole batch.
  std::vector<std::string> keys;
  keys.reserve(ids.size());
  std::string array = "{";
  for (const auto& id : ids) {
    keys.push_back(core::normalize_uuid(id).value_or(""));
    if (keys.back().empty())
      continue;
    if (array.size() > 1)
      array += ',';
    array += keys.back();
  }
  array += '}';
  const pg::param ps[] = {array, d.table};
  auto r = pg::exec_prepared(d.s(), stmt_get_many, ps);
  if (!r)
    return d.fail(r.error());
  const PGresult* res = r->get();
  // Answers in request order: keys sorted once, each row finds its requests.
  std::vector<std::pair<std::string_view, size_t>> order;
  order.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i)
    if (!keys[i].empty())
      order.emplace_back(keys[i], i);
  auto by_id = [](const auto& a, const auto& b) { return a.first < b.first; };
  std::sort(order.begin(), order.end(), by_id);
  for (int i = 0, n = PQntuples(res); i < n; ++i) {
    if (pg::is_null(res, i, 0)) {
      if (auto e = d.check_store(pg::text(res, i, 1)))
        return *e;
      batch.position = pg::to_u64(res, i, 4).value_or(0);
      continue;
    }
    todo_row row;
    row.id = pg::text(res, i, 0);
    row.description = pg::text(res, i, 1);
    row.status = pg::text(res, i, 2);
    row.version = pg::to_u64(res, i, 3).value_or(0);
    auto [first, last] = std::equal_range(order.begin(), order.end(),
                                          std::pair{std::string_view{row.id}, size_t{0}}, by_id);
    for (auto k = first; k != last; ++k)
      batch.rows[k->second] = row;
  }
  return batch;
}

pg_result<todo_page> todo_read_model::list(const todo_query& q) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  int64_t after = -1;
  if (q.after) {
    auto v = parse_cursor(*q.after);
    if (!v)
      return projection_error{projection_errc::invalid_cursor, "malformed cursor"};
    after = *v;
  }
  const size_t limit = std::clamp<size_t>(q.limit, 1, 1000);
  // One extra row tells whether another page follows.
  auto after_text = std::to_string(after);
  auto fetch_text = std::to_string(limit + 1);
  pg::outcome<pg::result_ptr> r = pg::failure{};
  if (q.status) {
    const pg::param ps[] = {d.table, after_text, fetch_text, *q.status};
    r = pg::exec_prepared(d.s(), stmt_list_by_status, ps);
  } else {
    const pg::param ps[] = {d.table, after_text, fetch_text};
    r = pg::exec_prepared(d.s(), stmt_list, ps);
  }
  if (!r)
    return d.fail(r.error());
  const PGresult* res = r->get();
  todo_page page;
  const int n = PQntuples(res);
  if (n > 0) {
    if (auto e = d.check_store(pg::text(res, 0, 6)))
      return *e;
    page.position = pg::to_u64(res, 0, 0).value_or(0);
  }
  uint64_t last_created = 0;
  for (int i = 0; i < n && page.items.size() < limit; ++i) {
    if (pg::is_null(res, i, 1))
      continue; // the empty page's placeholder row
    todo_row row;
    row.id = pg::text(res, i, 1);
    row.description = pg::text(res, i, 2);
    row.status = pg::text(res, i, 3);
    row.version = pg::to_u64(res, i, 4).value_or(0);
    last_created = pg::to_u64(res, i, 5).value_or(0);
    page.items.push_back(std::move(row));
  }
  if (static_cast<size_t>(n) > limit && !pg::is_null(res, static_cast<int>(limit), 1))
    page.next = std::to_string(last_created);
  return page;
}

pg_result<void> todo_read_model::reset() {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  d.known_checkpoint.reset();
  return d.in_transaction([&] { return d.create_schema(true); });
}

pg_result<void> todo_read_model::swap_into(std::string_view target) {
  auto& d = *impl_;
  if (auto e = d.require_ready())
    return *e;
  std::string t{target};
  if (!pg::is_plain_identifier(t, max_table_name) || t == "eventsd_checkpoints")
    return projection_error{projection_errc::query_failed, "invalid table name: " + t};
  if (t == d.table)
    return projection_error{projection_errc::query_failed, "cannot swap " + t + " into itself"};
  d.known_checkpoint.reset();
  if (auto r = d.run(with_tables(sql_analyze, d.table, t)); !r)
    return d.fail(r.error());
  return d.in_transaction([&] { return d.swap_once(t); });
}

std::optional<std::string> dsn_problem(const std::string& dsn) {
  return pg::dsn_problem(dsn);
}

} // namespace eventsd::projections
