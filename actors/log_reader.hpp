// Read-only access to the event log for the HTTP side: streams, `$all`,
// stream listing and the Todo history / state at an event.
//
// Actor ownership: spawn each reader `detached` (RocksDB reads block); run
// several for parallel reads. Readers share the `event_log` (reads are
// thread-safe) and keep no other state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/todo_aggregate.hpp"
#include "core/messages.hpp"
#include "core/reply_to.hpp"
#include "storage/event_log.hpp"

namespace eventsd::actors {

using recorded_events = std::vector<storage::recorded_event>;
using stream_summaries = std::vector<storage::stream_summary>;

/// Most events of one history page (`history_atom` with a version).
inline constexpr size_t history_page_size = 1000;

/// Handle of one log reader. Every read carries the `core::reply_to` its
/// answer goes to (its senders are not actors: the HTTP gateway).
using log_reader_actor = caf::typed_actor<
  /// One page of a history from a version up to where it ends (0: not
  /// known yet), given the state before it (ignored for version 1); see
  /// todo_history_page.
  caf::reacts_to<history_atom, std::string, uint64_t, uint64_t, todo::state,
                 core::reply_to<todo_history_chunk>>,
  caf::reacts_to<state_at_atom, std::string, std::string, core::reply_to<todo::state>>,
  /// A todo's version; see todo_version.
  caf::reacts_to<version_atom, std::string, core::reply_to<uint64_t>>,
  caf::reacts_to<stream_atom, std::string, uint64_t, uint64_t, core::reply_to<recorded_events>>,
  caf::reacts_to<all_atom, uint64_t, uint64_t, core::reply_to<recorded_events>>,
  caf::reacts_to<streams_atom, uint64_t, uint64_t, core::reply_to<stream_summaries>>>;

/// Behavior of a log reader. REQUIRES: `log` outlives the actor.
log_reader_actor::behavior_type log_reader(log_reader_actor::pointer self,
                                           const storage::event_log* log);

} // namespace eventsd::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::actors::todo_history_chunk)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::actors::todo_history_chunk>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::todo::state>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::actors::recorded_events>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<eventsd::actors::stream_summaries>)
