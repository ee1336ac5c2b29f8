// Binds the pure Todo model to the aggregate runtime, and the Todo read
// operations on the log (history, state at an event).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/all.hpp>

#include "actors/aggregate.hpp"
#include "actors/todo.hpp"
#include "actors/todo_codec.hpp"
#include "storage/event_log.hpp"

CAF_ERROR_CODE_ENUM(eventsd::todo::todo_errc, "todo")
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::todo::command)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::todo::state)

namespace eventsd::actors {

/// The Todo aggregate definition used by the runtime.
struct todo_aggregate {
  using state_type = todo::state;
  using command_type = todo::command;
  using event_type = todo::event;

  static constexpr std::string_view stream_prefix = "todo-";

  /// Registry key: a todo id is a canonical (lowercase) UUID, kept as its 16 bytes.
  using key_type = std::array<unsigned char, 16>;
  struct key_hash {
    size_t operator()(const key_type& k) const noexcept;
  };
  /// The key of `id`; nullopt when `id` is not a canonical UUID.
  static std::optional<key_type> key_of(std::string_view id);

  static state_type initial(const std::string& id) { return state_type{id, {}, {}, 0}; }
  static uint64_t version(const state_type& s) { return s.version; }
  static const std::string& id_of(const state_type& s) { return s.id; }
  static bool exists(const state_type& s) { return s.exists(); }
  /// True for the command that creates a todo under a new server-chosen id.
  static bool creates(const command_type& c) { return std::holds_alternative<todo::create>(c); }

  static todo::decision decide(const state_type& s, const command_type& c) {
    return todo::decide(s, c);
  }
  static state_type evolve(state_type s, const event_type& e) {
    return todo::evolve(std::move(s), e);
  }

  /// The CAF error of a refused command; the context carries field and message.
  static std::optional<caf::error> rejected(const todo::decision& d) {
    if (auto r = std::get_if<todo::rejection>(&d))
      return caf::make_error(r->code, r->field, r->message);
    return std::nullopt;
  }
  static event_type event_of(todo::decision&& d) { return std::get<event_type>(std::move(d)); }

  static std::string_view type_name(const event_type& e) { return todo::type_name(e); }
  static std::string encode(const event_type& e) { return todo::encode_data(e); }
  static std::optional<event_type> decode(std::string_view type, std::string_view data) {
    return todo::decode_event(type, data);
  }
  static std::string encode_state(const state_type& s) { return todo::encode_state(s); }
  static std::optional<state_type> decode_state(std::string_view b) {
    return todo::decode_state(b);
  }
};

using todo_registry = registry<todo_aggregate>;
using todo_registry_actor = registry_actor<todo_aggregate>;

/// One event of a todo together with the state right after it.
struct todo_history_item {
  storage::recorded_event event;
  todo::state state;
};

/// Part of a todo's history: consecutive events, each with the state after it.
struct todo_history_chunk {
  std::vector<todo_history_item> items;
  bool more = false; ///< pages follow, up to `through`
  /// The version the history ends at: the stream's version when its first
  /// page was read (a history is the stream as it was then, page after page).
  uint64_t through = 0;
};

/// Up to `limit` events of todo `id`'s history from version `from`, each with
/// the state after it; `before` is the state after version `from - 1` (none:
/// the initial state, for `from` = 1). `through` (0: none yet) is where the
/// history ends; a page without it sets it to the stream's version at the
/// read. Fails with `stream_not_found` for an unknown todo.
storage::result<todo_history_chunk> todo_history_page(const storage::event_log& log,
                                                      const std::string& id, uint64_t from,
                                                      std::optional<todo::state> before,
                                                      size_t limit, uint64_t through = 0);

/// The whole history of todo `id` (one page, `more` false) when the log's
/// stream cache holds its events; nullopt when it does not. Reads nothing
/// from RocksDB: may run where nothing may block (an io thread).
std::optional<storage::result<todo_history_chunk>>
cached_todo_history(const storage::event_log& log, const std::string& id);

/// The version of todo `id` (its last event's). Fails with `stream_not_found`
/// for an unknown todo.
storage::result<uint64_t> todo_version(const storage::event_log& log, const std::string& id);

/// The whole history of todo `id`, oldest first. Fails with
/// `stream_not_found` for an unknown todo.
storage::result<std::vector<todo_history_item>> todo_history(const storage::event_log& log,
                                                             const std::string& id);

/// The state of todo `id` right after its event `event_id` when the log's
/// stream cache holds its events and that event is one of them; nullopt
/// otherwise (`todo_state_at` then tells which error it is). Reads nothing
/// from RocksDB: may run where nothing may block (an io thread).
std::optional<storage::result<todo::state>>
cached_todo_state_at(const storage::event_log& log, const std::string& id,
                     const std::string& event_id);

/// The state of todo `id` right after event `event_id`. Fails with
/// `stream_not_found` (unknown todo) or `event_not_found` (no such event in
/// this todo).
storage::result<todo::state> todo_state_at(const storage::event_log& log, const std::string& id,
                                           const std::string& event_id);

} // namespace eventsd::actors
