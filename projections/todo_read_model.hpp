// The Todo read model in PostgreSQL (the CQRS read side) and its checkpoint.
//
// Thread-safety: one instance owns one libpq connection and is used by one
// thread (or one detached actor) at a time. Every call is blocking I/O.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/result.hpp"

namespace eventsd::projections {

/// Why a read-model operation failed. Starts at 1.
enum class projection_errc : uint8_t {
  unavailable = 1, ///< PostgreSQL cannot be reached or the connection broke
  not_found,       ///< no todo with that id in the read model
  query_failed,    ///< PostgreSQL answered an error to a statement
  invalid_cursor,  ///< the `after` cursor is malformed
  timeout,         ///< the read model did not reach a position in time
  diverged,        ///< the read model is another store's, or ahead of this store's log
};

/// Stable lowercase name of `x`.
const char* to_string(projection_errc x);

/// A failed read-model operation.
struct projection_error {
  projection_errc code;
  std::string detail;
};

template <class T>
using pg_result = storage::result<T, projection_error>;

/// One row of the `todos` read model.
struct todo_row {
  std::string id;          ///< canonical lowercase UUID
  std::string description;
  std::string status;      ///< "Created", "InProgress" or "Done"
  uint64_t version = 0;

  friend bool operator==(const todo_row&, const todo_row&) = default;
};

/// A page of `GET /todo`.
struct todo_page {
  std::vector<todo_row> items;
  std::optional<std::string> next; ///< cursor for the next page; empty at the end
  uint64_t position = 0;           ///< read-model checkpoint at the time of the query

  friend bool operator==(const todo_page&, const todo_page&) = default;
};

/// Query of `GET /todo`.
struct todo_query {
  size_t limit = 100;                ///< REQUIRES: 1..1000
  std::optional<std::string> after;  ///< cursor from a previous page's `next`
  std::optional<std::string> status; ///< filter: "Created", "InProgress" or "Done"
};

/// The effect of one event on one row: fields left empty are unchanged.
/// A `created` event sets both description and status.
struct todo_change {
  std::string id;                         ///< canonical lowercase UUID
  std::optional<std::string> description; ///< new description, if the event set one
  std::optional<std::string> status;      ///< new status, if the event set one
  uint64_t version = 0;                   ///< stream version after the event
  uint64_t position = 0;                  ///< position of the event in `$all`

  friend bool operator==(const todo_change&, const todo_change&) = default;
};

/// A row answered together with the read model's position.
struct todo_answer {
  todo_row row;
  uint64_t position = 0;
};

/// Several todos read in one query.
struct todo_batch {
  std::vector<std::optional<todo_row>> rows; ///< `rows[i]` answers `ids[i]`; empty: no such todo
  uint64_t position = 0;                     ///< read-model checkpoint of that snapshot
};

/// How a read model's connection is opened and how long its calls may take.
struct connection_options {
  /// Shown in PostgreSQL's `pg_stat_activity`.
  std::string application_name = "eventsd";
  /// Longest wait for PostgreSQL's answer to one statement (0: forever). One
  /// that runs out closes the connection and fails with `unavailable`, so a
  /// PostgreSQL (or a network path to it) that stops answering holds the
  /// caller this long, not until TCP gives up.
  std::chrono::milliseconds query_timeout{10000};
  /// The event store (`event_log::store_id`) this read model must be a fold
  /// of; empty: not checked. Reads fail with `diverged` when the checkpoint
  /// row names another store (see bind_store).
  std::string store;
  /// Set when the server stops: a call waiting for PostgreSQL gives up at
  /// once (the connection is closed, as at `query_timeout`); null: never.
  const std::atomic<bool>* cancel = nullptr;
  /// Longest wait of one statement for a lock (0: up to `query_timeout`).
  /// Readers wait for none in the usual course (a rebuild's swap holds its
  /// lock for milliseconds); one held for long (a DDL by hand) answers 503
  /// soon instead of holding every lookup queued behind it.
  std::chrono::milliseconds lock_timeout{0};
};

/// Why libpq cannot use `dsn`, as far as it can tell without connecting;
/// nothing when it can. Never repeats text of the DSN (a password).
std::optional<std::string> dsn_problem(const std::string& dsn);

/// The `todos` table (or a rebuild table) plus its checkpoint row, behind
/// one PostgreSQL connection.
class todo_read_model {
public:
  /// `dsn` is a libpq conninfo string; `table` names the read-model table
  /// (the checkpoint row uses the same name). Does not connect yet.
  todo_read_model(std::string dsn, std::string table = "todos", connection_options copts = {});
  ~todo_read_model();
  todo_read_model(const todo_read_model&) = delete;
  todo_read_model& operator=(const todo_read_model&) = delete;

  /// Connects when not connected (or the connection broke), creates the
  /// schema idempotently and prepares the statements.
  pg_result<void> connect();

  /// True while the connection is up and set up by connect().
  bool connected() const;

  /// Asks PostgreSQL for an answer within `deadline`; a connection that
  /// gives none is closed (connected() turns false).
  pg_result<void> probe(std::chrono::milliseconds deadline);

  /// Position of the last event applied to this table (0 when none).
  pg_result<uint64_t> checkpoint();

  /// The checkpoint row of another table of this database (`table`), if it
  /// has one: how a server finds a rebuild into `todos_rebuild` that a stop
  /// interrupted (the row goes when the rebuild is swapped in).
  struct checkpoint_row {
    uint64_t position = 0;
    std::string store; ///< empty when not claimed by a store
    bool table_exists = false; ///< the table itself (dropped by hand, say)
    std::string last_event; ///< id of the log's event at `position`; empty: not known
  };
  pg_result<std::optional<checkpoint_row>> checkpoint_of(std::string_view table);

  /// Ties the checkpoint to the event store `connection_options::store`,
  /// whose log ends at `head`, and answers the checkpoint. A checkpoint of no
  /// store yet (new, or rebuilt) is claimed. Fails with `diverged` when it is
  /// another store's, or ahead of `head`, or names an event the log does not
  /// have at its position (`event_at` answers the id of the log's event at a
  /// position, nullopt when it cannot tell) — the log lost events (an older
  /// copy restored, say) or the read model was made from another store; the
  /// row is then marked so that it stays refused, even once the log grows
  /// past it, until a rebuild.
  /// REQUIRES: `connection_options::store` is not empty.
  pg_result<uint64_t> bind_store(
    uint64_t head, const std::function<std::optional<std::string>(uint64_t)>& event_at = {});

  /// Applies `changes` (ascending by position) and moves the checkpoint to
  /// `new_checkpoint`, in one transaction. Changes at or below the stored
  /// checkpoint are skipped, so a retried batch is never applied twice.
  /// Uses one multi-row statement per batch, not one round trip per event.
  /// `last_event` is the id of the log's event at `new_checkpoint` (empty:
  /// not known), kept with the checkpoint for bind_store to check.
  pg_result<void> apply(std::span<const todo_change> changes, uint64_t new_checkpoint,
                        std::string_view last_event = {});

  /// One todo by id (lowercase). Fails with `not_found`.
  pg_result<todo_answer> get(std::string_view id);

  /// Todos by id (lowercase), all from one snapshot; ids that are not
  /// canonical UUIDs are answered as absent. Lets a reader answer every
  /// lookup waiting in its mailbox with one round trip.
  pg_result<todo_batch> get_many(std::span<const std::string> ids);

  /// A page of todos in creation order.
  pg_result<todo_page> list(const todo_query& q);

  /// Drops and recreates this table and resets its checkpoint to 0
  /// (used to start a rebuild into a fresh table).
  pg_result<void> reset();

  /// Atomically replaces table `target` (and its checkpoint) by this table:
  /// readers of `target` see the old rows until the commit, the new rows after.
  pg_result<void> swap_into(std::string_view target);

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace eventsd::projections
