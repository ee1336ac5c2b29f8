// core/lifeline.hpp: a long-lived actor that ends any other way than being
// stopped is reported, with what ended it; one that is stopped is not.
#include "core/lifeline.hpp"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

using namespace std::chrono_literals;

namespace {

/// What the watcher was told, waited for with a timeout.
struct reports {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> seen;

  auto callback() {
    return [this](const std::string& why) {
      std::lock_guard<std::mutex> guard{mtx};
      seen.push_back(why);
      cv.notify_all();
    };
  }

  std::optional<std::string> wait_first(std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lock{mtx};
    if (!cv.wait_for(lock, limit, [this] { return !seen.empty(); }))
      return std::nullopt;
    return seen.front();
  }

  size_t count() {
    std::lock_guard<std::mutex> guard{mtx};
    return seen.size();
  }
};

/// Throws on an int, quits on a string, answers nothing else.
caf::behavior fragile(caf::event_based_actor* self) {
  eventsd::core::end_on_exception(self);
  return {
    [](int) { throw std::runtime_error("the disk caught fire"); },
    [self](const std::string&) { self->quit(); },
  };
}

} // namespace

TEST_CASE("an actor ended by an escaped exception is reported with the exception's message",
          "[core][lifeline]") {
  reports r; // outlives the system, whose actors call it
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto a = sys.spawn(fragile);
  eventsd::core::on_unexpected_exit(a, "the fragile actor", r.callback());
  caf::anon_send(a, 42);
  auto why = r.wait_first(5s);
  REQUIRE(why);
  CHECK(*why == "the fragile actor stopped unexpectedly: exception: the disk caught fire");
}

TEST_CASE("an actor stopped by the server, or quitting by itself, is not reported",
          "[core][lifeline]") {
  reports r;
  {
    caf::actor_system_config cfg;
    caf::actor_system sys{cfg};
    auto stopped = sys.spawn(fragile);
    auto quitting = sys.spawn(fragile);
    auto detached = sys.spawn<caf::detached>(fragile);
    eventsd::core::on_unexpected_exit(stopped, "stopped", r.callback());
    eventsd::core::on_unexpected_exit(quitting, "quitting", r.callback());
    eventsd::core::on_unexpected_exit(detached, "detached", r.callback());
    caf::anon_send_exit(stopped, caf::exit_reason::user_shutdown);
    caf::anon_send(quitting, std::string{"bye"});
    caf::anon_send_exit(detached, caf::exit_reason::user_shutdown);
    sys.await_all_actors_done();
  }
  CHECK(r.count() == 0);
}

TEST_CASE("watching an actor that has ended already reports it at once", "[core][lifeline]") {
  reports r; // outlives the system, whose actors call it
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto a = sys.spawn<caf::detached>(fragile);
  caf::anon_send(a, 1);
  // Until its down message: await_all_actors_done() can return before an
  // actor counts as terminated, and the watch would then be an ordinary one.
  caf::scoped_actor{sys}->wait_for(a);
  eventsd::core::on_unexpected_exit(a, "the detached actor", r.callback());
  auto why = r.wait_first(0ms);
  REQUIRE(why);
  CHECK(why->find("the disk caught fire") != std::string::npos);
}
