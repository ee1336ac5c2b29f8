// Everything the HTTP gateway talks to, wired once by `main` (or a test).
// Holds actor handles only; no Beast types here.
//
// Thread-safety: used by every io thread; immutable after construction
// except for the round-robin counters (atomics) and the drain hooks and
// first answers (each behind its own mutex).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <caf/all.hpp>

#include "actors/log_reader.hpp"
#include "actors/todo_aggregate.hpp"
#include "core/messages.hpp"
#include "projections/projection.hpp"
#include "storage/event_log.hpp"

namespace eventsd::http {

/// HTTP options (see config/eventsd.conf for defaults and meaning).
struct http_options {
  std::string address = "127.0.0.1";
  uint16_t port = 8000;
  size_t threads = 2;
  size_t body_limit = 64 * 1024;
  std::chrono::milliseconds read_timeout{30'000};
  std::chrono::milliseconds request_timeout{60'000};
  /// On SIGTERM/SIGINT/SIGHUP, the longest wait for requests already read to be answered.
  std::chrono::milliseconds drain_timeout{5'000};
  std::string admin_token;
  std::string static_dir;
  std::chrono::milliseconds uow_timeout{5000};
  std::chrono::milliseconds sse_heartbeat{15'000};
  uint64_t sse_max_lag = 10'000;
  size_t sse_max_subscribers = 1'000;
  /// SSE subscribers behind the head reading a page at once (at least 1).
  size_t sse_catch_up_slots = 1;
  int64_t idempotency_retention_ms = 24LL * 3600 * 1000;
};

/// Runs jobs inside CAF actors so io threads never block on an actor: a job
/// calls `request(...).then(...)` and posts its answer back to a strand.
class bridge {
public:
  bridge(caf::actor_system& sys, size_t actors);

  /// Runs `job` in one of the bridge actors (round robin).
  void run(core::bridge_job job);

  /// Stops the bridge actors.
  void stop();

  const std::vector<caf::actor>& actors() const { return actors_; }

private:
  std::vector<caf::actor> actors_;
  std::atomic<size_t> next_{0};
};

/// What to answer, for requests still waiting, when the server starts to
/// drain (SIGTERM): a unit-of-work write whose event is durable answers 202
/// then, even while the projection it waits for is stuck. Thread-safe.
class drain_hooks {
public:
  /// Registers `hook`; runs it at once when the drain has begun.
  uint64_t add(std::function<void()> hook);
  /// Forgets hook `id` (its request was answered otherwise).
  void remove(uint64_t id);
  /// Runs every registered hook, once, and any later one at once.
  void drain();

private:
  std::mutex mtx_;
  bool draining_ = false;
  uint64_t next_ = 0;
  std::map<uint64_t, std::function<void()>> hooks_;
};

/// The answers of keyed unit-of-work writes, by the position of their event,
/// for the replays in this process: a replay that comes while the request
/// that appended the event still waits for the read model answers when it
/// does and as it does (201, or 202 when the read model lagged), not from a
/// wait of its own. The log records that answer with the key before it is
/// sent (for replays after a restart); this hands it to the replays waiting
/// here. Thread-safe.
class first_answers {
public:
  using clock = std::chrono::steady_clock;
  /// How long an answer is kept here at least (the log has it long before).
  static constexpr auto kept = std::chrono::seconds{5};

  struct settled {
    unsigned status = 0; ///< the status every request for the event answers
    bool first = false;  ///< this call settled it
  };
  /// A request for the event at `position` decided `status`. The first status
  /// settled stays and is returned (to this request too: the first request
  /// and a replay of it wait side by side, and whichever decides first
  /// decides for both); its followers get it, and so does any later follow()
  /// while it is kept.
  settled settle(uint64_t position, unsigned status);

  struct following {
    std::optional<unsigned> status; ///< settled already
    uint64_t id = 0;                ///< else: `then` was registered under this id
  };
  /// Calls `then` with the status once the event at `position` is settled.
  following follow(uint64_t position, std::function<void(unsigned)> then);
  /// Forgets follower `id` of `position` (its request was answered otherwise).
  void unfollow(uint64_t position, uint64_t id);

private:
  /// Drops answers settled longer than `kept` ago. REQUIRES: mtx_ held.
  void expire(clock::time_point now);

  struct entry {
    std::optional<unsigned> status;
    std::map<uint64_t, std::function<void(unsigned)>> followers;
  };
  std::mutex mtx_;
  uint64_t next_ = 0;
  std::unordered_map<uint64_t, entry> entries_;
  std::deque<std::pair<clock::time_point, uint64_t>> settled_; // oldest first
};

/// The gateway's view of the rest of eventsd.
struct services {
  caf::actor_system& system;
  storage::event_log& log;
  actors::todo_registry& registry;
  actors::log_writer_actor writer;
  std::vector<actors::log_reader_actor> log_readers;
  std::vector<projections::read_model_reader_actor> read_model_readers;
  projections::projection_actor projection;
  projections::projection_mode mode;
  bridge& jobs;
  http_options options;
  /// Each read-model reader's health, in their order (empty: not known).
  std::vector<std::shared_ptr<projections::reader_health>> read_model_health{};

  /// Next log reader / read-model reader, round robin; readers whose
  /// connection fails are skipped while another one is not failing.
  const actors::log_reader_actor& log_reader();
  const projections::read_model_reader_actor& read_model_reader();
  /// Read-model readers whose last connect failed.
  size_t failing_read_model_readers() const;
  /// True until a read-model reader has connected (readers connect at their
  /// first read).
  bool no_read_model_reader_connected_yet() const;

  std::atomic<size_t> next_log_reader{0};
  std::atomic<size_t> next_read_model_reader{0};
  drain_hooks on_drain{};
  first_answers answers{};
};

} // namespace eventsd::http
