// The projection that feeds the PostgreSQL Todo read model, its four
// synchronization modes, rebuild, and the reader actors that answer
// `GET /todo` and `GET /todo/{id}`.
//
// Actor ownership: the projection's handle is a front actor on CAF's
// scheduler that never blocks; it spawns and links the projection's worker.
// The worker and every reader are `detached` and own a libpq connection
// each (blocking I/O on their own threads). The worker reads the durable log
// by position; a `committed` message from the log writer only wakes it.
#pragma once

#include <atomic>
#include <memory>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <caf/all.hpp>

#include "core/messages.hpp"
#include "core/reply_to.hpp"
#include "projections/todo_read_model.hpp"
#include "storage/event_log.hpp"

CAF_ERROR_CODE_ENUM(eventsd::projections::projection_errc, "projection")

namespace eventsd::projections {

/// How the read model keeps up with the log (API.md §5).
enum class projection_mode : uint8_t { eventual, unit_of_work, on_demand, scheduled };

/// API name of `x`: "eventual", "unit-of-work", "on-demand" or "scheduled".
const char* to_string(projection_mode x);

/// Parses a mode name; empty when `name` is not one.
std::optional<projection_mode> parse_projection_mode(std::string_view name);

/// Options of the Todo projection.
struct projection_options {
  std::string dsn;                                     ///< libpq conninfo
  projection_mode mode = projection_mode::eventual;    ///< default eventual
  size_t batch_size = 1000;                            ///< most events per transaction
  /// `eventual` mode: a batch of fewer than `batch_size` events waits until
  /// this long after the previous batch began, so that more events share one
  /// transaction (PostgreSQL's cost per event falls with the batch size). Not
  /// while reads wait for a position, and never in the other modes.
  std::chrono::microseconds batch_wait{2000};
  size_t rebuild_batch_size = 5000;                    ///< most events per rebuild transaction
  std::chrono::milliseconds interval{1000};            ///< tick of `scheduled` mode
  std::chrono::milliseconds retry_min{100};            ///< first retry after a failure
  std::chrono::milliseconds retry_max{5000};           ///< cap of the retry backoff
  /// Longest wait for one statement's answer; see connection_options.
  std::chrono::milliseconds query_timeout{10000};
  /// The event store the read model must be a fold of (event_log::store_id);
  /// empty: not checked (tests of the projection alone).
  std::string store;
  /// Set when the server stops: a statement in flight is given up at once
  /// instead of at `query_timeout`; null: never.
  const std::atomic<bool>* cancel = nullptr;
};

/// What `GET /admin/projections` shows of one projection.
struct projection_status {
  std::string name;
  std::string mode;
  std::string state;     ///< "live", "catching-up", "waiting" (scheduled/on-demand), "error"
  uint64_t position = 0; ///< last applied position
  bool position_known = false; ///< false: PostgreSQL not reached since the start
  uint64_t head = 0;     ///< log head
  int64_t lag_ms = 0;    ///< age of the oldest unapplied event
  bool connected = false;
  std::string last_error;
  bool rebuilding = false;
  uint64_t rebuild_position = 0;
  uint64_t rebuild_head = 0;
  uint64_t rebuilds_completed = 0;
  bool diverged = false; ///< the read model is another store's or ahead of the log
  /// PostgreSQL holds the worker in a statement (last_error says how long):
  /// eventsd's own words, where other errors are PostgreSQL's.
  bool stuck = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, projection_status& x) {
  return f(caf::meta::type_name("projection_status"), x.name, x.mode, x.state, x.position,
           x.position_known, x.head, x.lag_ms, x.connected, x.last_error, x.rebuilding,
           x.rebuild_position, x.rebuild_head, x.rebuilds_completed, x.diverged, x.stuck);
}

/// Handle of the Todo projection. It answers waits and status at once; a
/// worker of its own (detached, linked) applies the log to PostgreSQL, so a
/// PostgreSQL that stops answering holds the worker only.
using projection_actor = caf::typed_actor<
  caf::reacts_to<core::committed>,
  /// Answers the position once it is >= the given one; fails after the
  /// given milliseconds with `timeout` (or `unavailable` / `diverged` when
  /// PostgreSQL is the reason), and at once with `unavailable` when the
  /// server stops or, on-demand, PostgreSQL cannot be reached.
  caf::replies_to<wait_atom, uint64_t, uint64_t>::with<uint64_t>,
  /// Applies everything up to the current head (on-demand reads), then
  /// answers the position; fails as wait_atom does.
  caf::replies_to<catch_up_atom, uint64_t>::with<uint64_t>,
  /// The status, after a probe of PostgreSQL; within 3 s even when
  /// PostgreSQL does not answer (then it says so).
  caf::replies_to<stats_atom>::with<projection_status>,
  /// Starts a rebuild into a fresh table, noted in the event store first so
  /// that a stop before it ends does not lose it (the next start takes it
  /// up); false when one is running; fails (`not_writable`) when it cannot
  /// be noted.
  caf::replies_to<rebuild_atom>::with<bool>,
  /// The server is stopping: every wait, and any later one, ends at once
  /// (`unavailable`), so that what waits on the read model is answered.
  caf::reacts_to<drain_atom>>;

/// Spawns the projection (a front actor and its detached worker).
/// REQUIRES: `log` outlives it.
projection_actor spawn_projection(caf::actor_system& sys, storage::event_log* log,
                                  projection_options opts);

/// Converts one logged event to its effect on the `todos` table; empty for
/// events of other streams or types the read model ignores.
std::optional<todo_change> to_change(const storage::recorded_event& e);

/// Handle of a read-model reader.
using read_model_reader_actor
  = caf::typed_actor<caf::reacts_to<fetch_atom, std::string, core::reply_to<todo_answer>>,
                     caf::reacts_to<list_atom, todo_query, core::reply_to<todo_page>>,
                     caf::reacts_to<flush_atom>, caf::reacts_to<recover_atom>>;

/// What a read-model reader tells those who pick one: whether its last
/// attempt to connect failed. A failing reader tries again by itself every
/// second until it connects, so reads can go to the others meanwhile. A
/// reader connects at its first read: until then it has `never_connected`.
struct reader_health {
  std::atomic<bool> failing{false};
  std::atomic<bool> never_connected{true};
};

/// Spawns one reader (detached) with its own connection to `dsn`, each
/// query of which may wait `query_timeout` for its answer (0: forever), and
/// which refuses (`diverged`) a read model of another store than `store`,
/// whose queries end at once when `cancel` is set (null: never), and which
/// keeps `health` (null: none) up to date.
read_model_reader_actor spawn_read_model_reader(
  caf::actor_system& sys, std::string dsn,
  std::chrono::milliseconds query_timeout = std::chrono::milliseconds{10000},
  std::string store = {}, const std::atomic<bool>* cancel = nullptr,
  std::shared_ptr<reader_health> health = nullptr);

/// Replays the whole log into a new table offline (CLI `--rebuild`), then
/// swaps it in (an online rebuild the store notes as asked for is then done): `batch_size` events per transaction, `query_timeout` per
/// statement (0: forever), progress through `progress(position, head)`.
/// Returns the final position.
pg_result<uint64_t> rebuild_offline(storage::event_log& log, const std::string& dsn,
                                    size_t batch_size, std::chrono::milliseconds query_timeout,
                                    const std::function<void(uint64_t, uint64_t)>& progress);

} // namespace eventsd::projections

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::projections::todo_query)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::projections::todo_answer>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::projections::todo_page>)
