// The one CAF type-ID block of eventsd: atoms, message types and error-code
// enums shared by every folder. Loaded in `main` and in the tests alike
// through `eventsd::core::configure_messages`.
//
// Message types that hold std::optional or std::variant are local-only
// (CAF 0.17 cannot serialize those standard types); every other type has an
// `inspect` overload beside it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "storage/event_log.hpp"
#include "storage/result.hpp"

namespace eventsd::core {

/// Why the runtime refused or could not finish a command. Starts at 1.
enum class runtime_errc : uint8_t {
  precondition_failed = 1, ///< `If-Match` differs from the current version
  shutting_down,           ///< the server is stopping
  invalid_id,              ///< not an id of the aggregate type (e.g. a todo id is a UUID)
  deadline_passed,         ///< a write that had not reached the log by its deadline: not written
};

/// Stable lowercase name of `x`.
const char* to_string(runtime_errc x);

/// A position in `$all` that became durable (sent by the log writer).
struct committed {
  uint64_t position = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, committed& x) {
  return f(caf::meta::type_name("committed"), x.position);
}

/// A unit of work run inside a bridge actor (HTTP → CAF without blocking).
using bridge_job = std::function<void(caf::event_based_actor*)>;

/// Registers a renderer for the error-code enum `Enum` under category
/// `name`; `to_string(Enum)` must be findable by ADL.
template <class Enum, size_t N>
void add_error_category(caf::actor_system_config& cfg, const char (&name)[N]) {
  std::string prefix = name;
  cfg.add_error_category(caf::atom(name), [prefix](uint8_t code, caf::atom_value,
                                                   const caf::message& ctx) {
    std::string out = prefix;
    out.append(": ").append(to_string(static_cast<Enum>(code)));
    if (!ctx.empty())
      out.append(" ").append(caf::to_string(ctx));
    return out;
  });
}

/// Adds the eventsd message types and error categories to `cfg`.
void configure_messages(caf::actor_system_config& cfg);

/// Turns a storage error into a CAF error (category "storage").
caf::error make_error(const storage::storage_error& err);

} // namespace eventsd::core

namespace eventsd::storage {

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, append_result& x) {
  return f(caf::meta::type_name("append_result"), x.stream, x.version, x.first_position,
           x.last_position, x.replayed, x.first_answer);
}

} // namespace eventsd::storage

CAF_ERROR_CODE_ENUM(eventsd::storage::storage_errc, "storage")
CAF_ERROR_CODE_ENUM(eventsd::core::runtime_errc, "runtime")

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::storage::append_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::bridge_job)

CAF_BEGIN_TYPE_ID_BLOCK(eventsd, caf::first_custom_type_id)

  CAF_ADD_TYPE_ID(eventsd, (eventsd::core::committed))
  CAF_ADD_TYPE_ID(eventsd, (eventsd::storage::append_result))

  CAF_ADD_ATOM(eventsd, eventsd, append_atom, "append")
  CAF_ADD_ATOM(eventsd, eventsd, flush_atom, "flush")
  CAF_ADD_ATOM(eventsd, eventsd, execute_atom, "execute")
  CAF_ADD_ATOM(eventsd, eventsd, listen_atom, "listen")
  CAF_ADD_ATOM(eventsd, eventsd, run_atom, "run")
  CAF_ADD_ATOM(eventsd, eventsd, history_atom, "history")
  CAF_ADD_ATOM(eventsd, eventsd, state_at_atom, "state_at")
  CAF_ADD_ATOM(eventsd, eventsd, stream_atom, "stream")
  CAF_ADD_ATOM(eventsd, eventsd, all_atom, "all")
  CAF_ADD_ATOM(eventsd, eventsd, streams_atom, "streams")
  CAF_ADD_ATOM(eventsd, eventsd, idle_atom, "idle")
  CAF_ADD_ATOM(eventsd, eventsd, stats_atom, "stats")
  CAF_ADD_ATOM(eventsd, eventsd, wait_atom, "wait")
  CAF_ADD_ATOM(eventsd, eventsd, tick_atom, "tick")
  CAF_ADD_ATOM(eventsd, eventsd, rebuild_atom, "rebuild")
  CAF_ADD_ATOM(eventsd, eventsd, catch_up_atom, "catch_up")
  CAF_ADD_ATOM(eventsd, eventsd, list_atom, "list")
  CAF_ADD_ATOM(eventsd, eventsd, passivate_atom, "passivate")
  CAF_ADD_ATOM(eventsd, eventsd, fetch_atom, "fetch")
  CAF_ADD_ATOM(eventsd, eventsd, stopped_atom, "stopped")
  CAF_ADD_ATOM(eventsd, eventsd, expire_atom, "expire")
  CAF_ADD_ATOM(eventsd, eventsd, answered_atom, "answered")
  CAF_ADD_ATOM(eventsd, eventsd, recover_atom, "recover")
  CAF_ADD_ATOM(eventsd, eventsd, snapshot_atom, "snapshot")
  CAF_ADD_ATOM(eventsd, eventsd, drain_atom, "drain")
  CAF_ADD_ATOM(eventsd, eventsd, rebuild_step_atom, "rb_step")
  CAF_ADD_ATOM(eventsd, eventsd, version_atom, "version")
  CAF_ADD_ATOM(eventsd, eventsd, note_atom, "note")
  CAF_ADD_ATOM(eventsd, eventsd, forget_atom, "forget")

CAF_END_TYPE_ID_BLOCK(eventsd)
