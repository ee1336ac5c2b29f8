// JSON codec of Todo events and states: the payload stored in the log and
// the snapshot bytes. Pure functions, thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "actors/todo.hpp"

namespace eventsd::todo {

/// The `data` JSON text of `e` as stored in the log.
std::string encode_data(const event& e);

/// Rebuilds an event from its stored type name and `data` JSON text; empty
/// when the type is unknown or the data does not match it.
std::optional<event> decode_event(std::string_view type, std::string_view data);

/// Snapshot bytes of `s`.
std::string encode_state(const state& s);

/// Rebuilds a state from snapshot bytes; empty when they are malformed.
std::optional<state> decode_state(std::string_view bytes);

} // namespace eventsd::todo
