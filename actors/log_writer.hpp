// The single log writer: group commit of the appends of every aggregate.
//
// Actor ownership: spawned `detached` (it blocks on RocksDB writes and
// fsync on its own thread); it is the only caller of `event_log::append`.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "core/messages.hpp"
#include "core/reply_to.hpp"
#include "storage/event_log.hpp"

namespace eventsd::actors {

/// Receives the newest durable position after every committed batch.
using position_listener_actor = caf::typed_actor<caf::reacts_to<core::committed>>;

/// Appends streams' events; answers with where they landed once durable.
using log_writer_actor = caf::typed_actor<
  caf::replies_to<append_atom, storage::append_request>::with<storage::append_result>,
  caf::reacts_to<listen_atom, position_listener_actor>, caf::reacts_to<flush_atom>,
  caf::reacts_to<tick_atom>,
  // The first answer to the request that claimed an idempotency key is to
  // have this status, not the usual one (event_log::mark_idempotency_answer):
  // called back, once it is durable, with the status recorded (the first).
  caf::reacts_to<answered_atom, std::string, uint64_t, core::reply_to<uint64_t>>>;

/// Deletes expired idempotency keys every `purge_interval`.
using key_purger_actor = caf::typed_actor<caf::reacts_to<expire_atom>>;

/// Group-commit bounds.
struct writer_options {
  /// Most appends in one WriteBatch (default 512).
  size_t max_batch = 512;
  /// How long the first append of a batch may wait for company (default 0:
  /// a batch is whatever queued up while the previous fsync ran).
  std::chrono::microseconds max_wait{0};
  /// Idempotency keys older than this are deleted (default 24 h).
  std::chrono::milliseconds idempotency_retention{24 * 3600 * 1000};
  /// How often expired idempotency keys are purged (default 10 min).
  std::chrono::milliseconds purge_interval{10 * 60 * 1000};
  /// How much longer than the retention a key is kept: a retry is judged by
  /// when it arrived, and may wait for the writer up to its deadline (the
  /// request timeout), so a key must outlive the retention by that much or
  /// a retry that arrived in time could find it purged and create anew
  /// (default 2 min: twice the default request timeout).
  std::chrono::milliseconds purge_grace{2 * 60 * 1000};
};

/// State of the log writer actor.
struct log_writer_state {
  storage::event_log* log = nullptr;
  writer_options options;
  std::vector<storage::append_request> pending;
  std::vector<caf::typed_response_promise<storage::append_result>> promises;
  bool flush_scheduled = false;
  /// The batch in `pending` has been appended; its answers are going out.
  bool appended = false;
  std::vector<position_listener_actor> listeners;
  key_purger_actor purger; ///< stopped with the writer
  static inline const char* name = "log_writer";
};

/// Behavior of the key purger, which the log writer spawns detached (and
/// stops when it stops): a purge scans every stored key, and on a thread of its own it
/// does not hold up appends (the store's writer lock is taken per chunk).
/// REQUIRES: `log` outlives the actor.
key_purger_actor::behavior_type key_purger(key_purger_actor::pointer self,
                                           storage::event_log* log, writer_options options);

/// Behavior of the log writer. REQUIRES: `log` outlives the actor.
log_writer_actor::behavior_type
log_writer(log_writer_actor::stateful_pointer<log_writer_state> self, storage::event_log* log,
           writer_options options);

} // namespace eventsd::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<uint64_t>)
