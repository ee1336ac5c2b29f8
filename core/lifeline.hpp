// Long-lived actors (the log writer, the loaders, the registry shards, the
// readers, the projection) end only when the server stops them. One that
// ends otherwise — an exception escaped one of its handlers — leaves the
// server unable to do what it did, and whatever waited for it waiting: the
// server must not go on looking healthy. `on_unexpected_exit` tells the
// server, which then stops (and a supervisor restarts it).
#pragma once

#include <exception>
#include <string>
#include <utility>

#include <caf/actor_cast.hpp>
#include <caf/error.hpp>
#include <caf/exit_reason.hpp>
#include <caf/sec.hpp>

namespace eventsd::core {

/// The error an escaped exception ends an actor with: `runtime_error`
/// carrying the exception's message (CAF's default handler keeps only
/// `runtime_error`).
inline caf::error exception_error(std::exception_ptr& thrown) {
  try {
    std::rethrow_exception(thrown);
  } catch (const std::exception& e) {
    return caf::make_error(caf::sec::runtime_error, std::string{"exception: "} + e.what());
  } catch (...) {
    return caf::make_error(caf::sec::runtime_error, "an exception of unknown type");
  }
}

/// Makes an exception that escapes a handler of `self` end it with
/// `exception_error`. Call it in the behavior's set-up.
template <class Self>
void end_on_exception(Self* self) {
  self->set_exception_handler(
    [](std::exception_ptr& thrown) -> caf::error { return exception_error(thrown); });
}

/// True for the ways a long-lived actor is meant to end.
inline bool expected_exit(const caf::error& reason) {
  return !reason || reason == caf::exit_reason::normal
         || reason == caf::exit_reason::user_shutdown;
}

/// Calls `on_failure(description)` when the actor of `handle` ends for any
/// other reason than `expected_exit` — at once if it has ended already. The
/// call comes from the ending actor's thread.
template <class Handle, class F>
void on_unexpected_exit(const Handle& handle, std::string name, F on_failure) {
  auto* actor = caf::actor_cast<caf::abstract_actor*>(handle);
  actor->attach_functor([name = std::move(name),
                         f = std::move(on_failure)](const caf::error& reason) {
    if (expected_exit(reason))
      return;
    // The exception's message when it carries one (exception_error).
    auto& ctx = reason.context();
    auto what = ctx.size() == 1 && ctx.match_element<std::string>(0) ? ctx.get_as<std::string>(0)
                                                                    : caf::to_string(reason);
    f(name + " stopped unexpectedly: " + what);
  });
}

} // namespace eventsd::core
