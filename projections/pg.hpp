// Small RAII helpers over libpq: owning pointers for connections and results,
// statements with $n text parameters, failures as values, and a deadline on
// every call (a PostgreSQL that stops answering must not hold a thread).
//
// Thread-safety: none of their own; a PGconn must be used by one thread at a
// time (libpq's rule). All calls are blocking I/O, bounded by the session's
// timeout.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "storage/result.hpp"

namespace eventsd::projections::pg {

/// Closes a connection with PQfinish.
struct conn_deleter {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};

/// Frees a result with PQclear.
struct result_deleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};

/// An owned libpq connection.
using conn_ptr = std::unique_ptr<PGconn, conn_deleter>;

/// An owned libpq result.
using result_ptr = std::unique_ptr<PGresult, result_deleter>;

/// Why a libpq call failed.
struct failure {
  bool connection_lost = false; ///< the server is unreachable or the connection broke
  std::string sqlstate;         ///< five-character SQLSTATE, empty when none was received
  std::string message;          ///< libpq's or the server's message, one line

  /// True for failures a whole transaction may be retried after
  /// (serialization_failure 40001, deadlock_detected 40P01).
  bool retryable() const noexcept {
    return !connection_lost && (sqlstate == "40001" || sqlstate == "40P01");
  }
};

template <class T>
using outcome = storage::result<T, failure>;

/// One text parameter; `std::nullopt` is SQL NULL. The string must outlive
/// the call it is passed to.
using param = std::optional<std::string_view>;

/// Opens a connection to `dsn` (a conninfo string or URI) in non-blocking
/// mode. Defaults that the DSN does not override: connect_timeout=3, TCP
/// keepalives (idle 10 s, interval 5 s, 3 probes), application_name=`app`.
/// With one host the attempt ends within 100 ms once `cancel` is set (null:
/// never); a DSN naming several hosts connects with libpq's blocking call,
/// which moves on to the next host after connect_timeout.
outcome<conn_ptr> connect(const std::string& dsn, const char* app = "eventsd",
                          const std::atomic<bool>* cancel = nullptr);

/// Why libpq cannot use `dsn`, as far as it can tell without connecting (its
/// syntax, a port that is not one, an unknown sslmode); nothing when it can.
/// Never repeats text of the DSN, which may hold a password.
std::optional<std::string> dsn_problem(const std::string& dsn);

/// True when `c` is non-null and libpq believes the connection is up.
bool is_up(const PGconn* c) noexcept;

/// A connection and how long each call on it may wait for PostgreSQL.
struct session {
  PGconn* conn = nullptr;
  /// Longest wait for one call's answer (sending included); 0 waits forever.
  /// A call that runs out fails with `connection_lost`: the connection is
  /// then mid-query and must be closed, and whether the statement took
  /// effect is unknown (as with any lost connection).
  std::chrono::milliseconds timeout{0};
  /// When set (non-null and true), a call waiting for PostgreSQL gives up
  /// within 100 ms and fails with `connection_lost`, as at `timeout`.
  const std::atomic<bool>* cancel = nullptr;
  /// What set `timeout`, named in the error when it runs out.
  std::string_view timeout_source = "postgres.query-timeout-ms";
};

/// Runs `sql` (no parameters; may hold several statements) with the simple
/// query protocol. With several statements the first error, else the last
/// result, is answered.
outcome<result_ptr> exec(session s, const char* sql);

/// Runs `sql` with `$1..$n` bound to `params` (unnamed statement).
outcome<result_ptr> exec(session s, const char* sql, std::span<const param> params);

/// Prepares `sql` as the named statement `name`.
outcome<void> prepare(session s, const char* name, const char* sql, int n_params);

/// Runs the prepared statement `name` with `params`.
outcome<result_ptr> exec_prepared(session s, const char* name, std::span<const param> params);

/// True when field (`row`, `col`) of `r` is SQL NULL.
bool is_null(const PGresult* r, int row, int col) noexcept;

/// Field (`row`, `col`) of `r` as text ("" for NULL). The view lives as long as `r`.
std::string_view text(const PGresult* r, int row, int col) noexcept;

/// Field (`row`, `col`) of `r` as a non-negative bigint; nullopt when NULL,
/// negative or not a number.
std::optional<uint64_t> to_u64(const PGresult* r, int row, int col) noexcept;

/// Appends `s` as one element of a PostgreSQL array literal: double-quoted,
/// with backslash and double quote escaped.
void append_array_element(std::string& out, std::string_view s);

/// Appends `s` as one element of a PostgreSQL array literal, NULL when empty.
void append_array_element(std::string& out, const std::optional<std::string>& s);

/// True for a plain lowercase SQL identifier: [a-z_][a-z0-9_]*, 1..`max_len` chars.
bool is_plain_identifier(std::string_view s, size_t max_len = 63) noexcept;

} // namespace eventsd::projections::pg
