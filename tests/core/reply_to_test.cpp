// core::reply_to: the completion the HTTP gateway sends inside a message
// instead of making a request. It must be answered exactly once, whatever
// happens to the message: answered by the receiver, copied, or dropped
// because the receiver is gone (then with sec::request_receiver_down).
#include "core/reply_to.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "core/messages.hpp"

using namespace eventsd;
using namespace std::chrono_literals;

namespace {

/// Records every call of a reply_to<int>.
struct recorder {
  std::mutex mtx;
  std::vector<caf::expected<int>> calls;

  core::reply_to<int> make() {
    return core::reply_to<int>{[this](caf::expected<int> r) {
      std::lock_guard<std::mutex> guard{mtx};
      calls.push_back(std::move(r));
    }};
  }
  size_t count() {
    std::lock_guard<std::mutex> guard{mtx};
    return calls.size();
  }
};

bool eventually(const std::function<bool()>& done) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

using doubler = caf::typed_actor<caf::reacts_to<int, core::reply_to<int>>>;

struct config : caf::actor_system_config {
  config() { core::configure_messages(*this); }
};

} // namespace

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(eventsd::core::reply_to<int>)

TEST_CASE("reply_to: a value reaches the callback once; later calls and copies add nothing",
          "[core][reply_to]") {
  recorder rec;
  {
    auto r = rec.make();
    auto copy = r;
    r(21);
    copy(22);
    r(caf::make_error(caf::sec::runtime_error));
  }
  REQUIRE(rec.count() == 1);
  REQUIRE(rec.calls[0]);
  CHECK(*rec.calls[0] == 21);
}

TEST_CASE("reply_to: an error reaches the callback as the error", "[core][reply_to]") {
  recorder rec;
  rec.make()(caf::make_error(caf::sec::invalid_argument));
  REQUIRE(rec.count() == 1);
  REQUIRE_FALSE(rec.calls[0]);
  CHECK(rec.calls[0].error() == caf::sec::invalid_argument);
}

TEST_CASE("reply_to: dropped uncalled, it answers request_receiver_down (no caller waits forever)",
          "[core][reply_to]") {
  recorder rec;
  {
    auto r = rec.make();
    auto copy = r;
    CHECK(rec.count() == 0); // not while a copy lives
  }
  REQUIRE(rec.count() == 1);
  REQUIRE_FALSE(rec.calls[0]);
  CHECK(rec.calls[0].error() == caf::sec::request_receiver_down);
}

TEST_CASE("reply_to through actors: answered by a live actor, refused by a stopped one",
          "[core][reply_to]") {
  config cfg;
  caf::actor_system sys{cfg};
  auto actor = sys.spawn([]() -> doubler::behavior_type {
    return {[](int x, const core::reply_to<int>& reply) { reply(2 * x); }};
  });
  recorder answered;
  caf::anon_send(actor, 21, answered.make());
  REQUIRE(eventually([&] { return answered.count() == 1; }));
  REQUIRE(answered.calls[0]);
  CHECK(*answered.calls[0] == 42);

  caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  {
    caf::scoped_actor self{sys};
    self->wait_for(actor);
  }
  recorder dropped;
  caf::anon_send(actor, 1, dropped.make());
  REQUIRE(eventually([&] { return dropped.count() == 1; }));
  REQUIRE_FALSE(dropped.calls[0]);
  CHECK(dropped.calls[0].error() == caf::sec::request_receiver_down);
}
