// The Todo aggregate as pure code: commands, events, state, decide and evolve.
// No actor, storage or JSON here; every function is pure and thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace eventsd::todo {

/// Lifecycle status of a todo.
enum class status : uint8_t { created, in_progress, done };

/// API name of `x`: "Created", "InProgress" or "Done".
std::string_view to_string(status x);

/// Parses an API status name; empty when `name` is not one.
std::optional<status> parse_status(std::string_view name);

/// Current state of one todo; `version == 0` means it does not exist yet.
struct state {
  std::string id;
  std::string description;
  todo::status status = status::created;
  uint64_t version = 0;

  bool exists() const noexcept { return version > 0; }
  friend bool operator==(const state&, const state&) = default;
};

// -- events ------------------------------------------------------------------

/// The todo was created.
struct created {
  std::string description;
  friend bool operator==(const created&, const created&) = default;
};

/// The description was replaced.
struct description_changed {
  std::string description;
  friend bool operator==(const description_changed&, const description_changed&) = default;
};

/// The status became InProgress.
struct status_changed_to_in_progress {
  friend bool operator==(const status_changed_to_in_progress&,
                         const status_changed_to_in_progress&) = default;
};

/// The status became Done.
struct status_changed_to_done {
  friend bool operator==(const status_changed_to_done&, const status_changed_to_done&) = default;
};

/// Description and status were restored to those right after event `event_id`.
struct undone_to {
  std::string event_id;
  uint64_t target_version = 0;
  std::string description;
  todo::status status = status::created;
  friend bool operator==(const undone_to&, const undone_to&) = default;
};

/// Anything that can happen to a todo.
using event = std::variant<created, description_changed, status_changed_to_in_progress,
                           status_changed_to_done, undone_to>;

/// The event type name stored in the log, e.g. "created".
std::string_view type_name(const event& e);

// -- commands ----------------------------------------------------------------

struct create {
  std::string description;
  friend bool operator==(const create&, const create&) = default;
};

struct change_description {
  std::string description;
  friend bool operator==(const change_description&, const change_description&) = default;
};

struct put_in_progress {
  friend bool operator==(const put_in_progress&, const put_in_progress&) = default;
};

struct mark_done {
  friend bool operator==(const mark_done&, const mark_done&) = default;
};

/// Undo to event `event_id`; `target` is the state right after that event,
/// resolved from the log by the runtime before the command is decided.
struct undo_to {
  std::string event_id;
  state target;
  friend bool operator==(const undo_to&, const undo_to&) = default;
};

/// Anything a client can ask of a todo.
using command = std::variant<create, change_description, put_in_progress, mark_done, undo_to>;

// -- decisions ---------------------------------------------------------------

/// Why a command was refused. Starts at 1.
enum class todo_errc : uint8_t {
  invalid_description = 1, ///< not 2..255 code points, or not valid UTF-8
  not_found,               ///< the todo does not exist
  already_exists,          ///< create on an existing todo
  unknown_event,           ///< undo target is not an event of this todo
};

/// Stable lowercase name of `x`.
const char* to_string(todo_errc x);

/// A refused command: which rule, which field, and a message for people.
struct rejection {
  todo_errc code;
  std::string field;   ///< JSON field name, or empty
  std::string message;
  friend bool operator==(const rejection&, const rejection&) = default;
};

/// The outcome of `decide`: exactly one event, or a rejection.
using decision = std::variant<event, rejection>;

/// Number of Unicode code points in `utf8`; empty when it is not valid UTF-8.
std::optional<size_t> count_code_points(std::string_view utf8);

/// Smallest and largest description length, in code points.
inline constexpr size_t min_description = 2;
inline constexpr size_t max_description = 255;

/// Checks a description; the rejection names the field "description".
std::optional<rejection> validate_description(std::string_view description);

/// Decides what `cmd` does to a todo in state `current`.
decision decide(const state& current, const command& cmd);

/// The state after `e` happened to `current`.
state evolve(state current, const event& e);

} // namespace eventsd::todo
