// Shared helpers of the actor runtime tests: a fresh RocksDB directory, an
// actor system configured like main, and a running writer + Todo registry.
//
// Thread-safety: a `runtime` is built and torn down by one test thread; its
// `execute`/`live` helpers may be called from any thread (but Catch2
// assertions only from the test thread).
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "actors/log_writer.hpp"
#include "actors/todo_aggregate.hpp"
#include "core/messages.hpp"
#include "storage/event_log.hpp"

namespace eventsd::test {

/// How long a test waits for any actor's answer before failing (a broken
/// runtime fails the test instead of hanging it).
inline const caf::duration reply_timeout{std::chrono::seconds{20}};

/// A fresh, unique directory under the system temp dir, removed afterwards.
class temp_dir {
public:
  temp_dir() {
    static std::atomic<uint64_t> counter{0};
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path()
            / ("eventsd-actors-test-" + std::to_string(::getpid()) + "-"
               + std::to_string(counter++) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  std::string db() const { return (path_ / "db").string(); }

private:
  std::filesystem::path path_;
};

/// Opens the event log in `dir` (fsync on, as in production).
inline std::unique_ptr<storage::event_log> open_log(const std::string& dir) {
  storage::log_options opts;
  opts.dir = dir;
  opts.block_cache_mb = 8;
  auto log = storage::event_log::open(opts);
  if (!log.ok())
    FAIL("cannot open the event log in " << dir << ": " << log.error().detail);
  return std::move(log).value();
}

/// An actor system configuration set up exactly like main's.
struct test_config : caf::actor_system_config {
  test_config() {
    core::configure_messages(*this);
    core::add_error_category<todo::todo_errc>(*this, "todo");
    set("scheduler.max-threads", 4);
  }
};

/// True when `err` is error code `code` of its enum's category.
template <class Enum>
bool is_error(const caf::error& err, Enum code) {
  return err.category() == caf::detail::error_factory<Enum>::category
         && err.code() == static_cast<uint8_t>(code);
}

/// Polls `done` every 20 ms for up to `limit`; true once it holds.
inline bool eventually(const std::function<bool()>& done,
                       std::chrono::milliseconds limit = std::chrono::seconds{5}) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  return true;
}

/// Outcome of one command sent to the registry: a write outcome or an error.
struct outcome {
  std::optional<actors::write_outcome> value;
  caf::error error;
  std::string rendered; ///< the error as the actor system renders it

  explicit operator bool() const { return value.has_value(); }
  const actors::write_outcome* operator->() const { return &*value; }
};

/// What the registry writes through in place of the log writer: made from it
/// (a test's actor that passes appends on and alters their answers).
using writer_front =
  std::function<actors::log_writer_actor(caf::actor_system&, actors::log_writer_actor)>;

/// A running log writer and Todo registry over an event log, wired like main
/// (unless a `front` stands between them).
/// REQUIRES: `log` outlives the runtime.
class runtime {
public:
  runtime(storage::event_log* log, actors::runtime_options ropts = {},
          actors::writer_options wopts = {}, writer_front front = {})
    : log_(log), sys_(cfg_) {
    writer_ = sys_.spawn<caf::detached>(actors::log_writer, log, wopts);
    front_ = front ? front(sys_, writer_) : writer_;
    registry_.emplace(sys_, log, front_, ropts);
  }

  ~runtime() {
    registry_->stop();
    caf::anon_send_exit(front_, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(writer_, caf::exit_reason::user_shutdown);
  }

  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  caf::actor_system& sys() { return sys_; }
  storage::event_log& log() { return *log_; }
  const actors::log_writer_actor& writer() const { return writer_; }
  const actors::todo_registry& registry() const { return *registry_; }

  /// Sends one command to the shard of `id` and waits for the answer.
  outcome execute(const std::string& id, todo::command cmd,
                  actors::write_conditions cond = {}) {
    std::vector<addressed_command> one;
    one.push_back(addressed_command{id, std::move(cmd), std::move(cond)});
    return std::move(execute_burst(std::move(one)).front());
  }

  /// One command of a burst.
  struct addressed_command {
    std::string id;
    todo::command cmd;
    actors::write_conditions cond = {};
  };

  /// Sends every command, each with a `write_reply` (the gateway's form),
  /// from this thread without waiting in between (so each shard receives its
  /// commands in sending order), then collects the answers in sending order.
  /// An answer that has not come `reply_timeout` after the sending is a
  /// `request_timeout` error.
  std::vector<outcome> execute_burst(std::vector<addressed_command> cmds) {
    using answer = caf::expected<actors::write_outcome>;
    auto deadline = std::chrono::steady_clock::now();
    deadline += reply_timeout;
    std::vector<std::future<answer>> answers;
    for (auto& c : cmds) {
      // Shared: a reply after a timed-out wait must not reach a destroyed promise.
      auto answered = std::make_shared<std::promise<answer>>();
      answers.push_back(answered->get_future());
      caf::anon_send(registry_->shard_for(c.id), execute_atom_v, c.id, std::move(c.cmd),
                     std::move(c.cond), actors::write_reply{[answered](answer r) {
                       answered->set_value(std::move(r));
                     }});
    }
    std::vector<outcome> results(answers.size());
    for (size_t i = 0; i < answers.size(); ++i) {
      answer r{caf::make_error(caf::sec::request_timeout)};
      if (answers[i].wait_until(deadline) == std::future_status::ready)
        r = answers[i].get();
      if (r) {
        results[i].value = std::move(*r);
      } else {
        results[i].rendered = sys_.render(r.error());
        results[i].error = std::move(r.error());
      }
    }
    return results;
  }

  /// Live aggregates as the registry shards count them (sum of `stats_atom`).
  uint64_t live() {
    caf::scoped_actor self{sys_};
    uint64_t sum = 0;
    for (auto& shard : registry_->shards())
      self->request(shard, reply_timeout, stats_atom_v)
        .receive([&](uint64_t n) { sum += n; },
                 [&](caf::error& e) { FAIL("stats failed: " << sys_.render(e)); });
    return sum;
  }

private:
  storage::event_log* log_;
  test_config cfg_;
  caf::actor_system sys_;
  actors::log_writer_actor writer_;
  actors::log_writer_actor front_;
  std::optional<actors::todo_registry> registry_;
};

/// Requires that an `outcome` is a success, showing the error otherwise.
/// Evaluates its argument once.
#define REQUIRE_OK(expr)                                                       \
  do {                                                                         \
    auto&& outcome_ = (expr);                                                  \
    INFO("error: " << outcome_.rendered);                                      \
    REQUIRE(outcome_);                                                         \
  } while (false)

/// Milliseconds since the Unix epoch, now (idempotency claims carry it).
inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

/// Aggregate actors alive in the whole process (metrics gauge).
inline int64_t live_actors() {
  return core::metrics::instance().live_aggregates.value();
}

} // namespace eventsd::test
