// A completion carried inside a message, for senders that are not actors
// (the HTTP gateway's io threads): the receiving actor calls it with a value
// or an error instead of answering a request. Saves the request's hops
// through a bridge actor, its timeout timer and, for detached receivers, two
// thread switches per request.
//
// Thread-safety: called from the receiver's thread; the callback must be
// safe to run there (the gateway's only posts the answer to its strand).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <utility>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/sec.hpp>

namespace eventsd::core {

/// Called exactly once. Copies share one completion; when the last copy is
/// destroyed uncalled (the message was dropped because its receiver
/// stopped), it is called with `sec::request_receiver_down`, so a caller
/// never waits forever.
template <class T>
class reply_to {
public:
  using callback = std::function<void(caf::expected<T>)>;

  reply_to() = default;
  explicit reply_to(callback fn) : state_(std::make_shared<state>(std::move(fn))) {}

  void operator()(T value) const { state_->deliver(std::move(value)); }
  void operator()(caf::error err) const { state_->deliver(std::move(err)); }
  void operator()(caf::expected<T> r) const { state_->deliver(std::move(r)); }

private:
  struct state {
    explicit state(callback f) : fn(std::move(f)) {}
    state(const state&) = delete;
    state& operator=(const state&) = delete;
    ~state() {
      if (!done.exchange(true))
        fn(caf::expected<T>{caf::make_error(caf::sec::request_receiver_down)});
    }
    void deliver(caf::expected<T> r) {
      if (!done.exchange(true))
        fn(std::move(r));
    }
    callback fn;
    std::atomic<bool> done{false};
  };
  std::shared_ptr<state> state_;
};

} // namespace eventsd::core
