// The memory floor of CAF 0.17 itself, for scripts/bench-memory: spawns N
// stateful typed event-based actors shaped like eventsd's aggregate actor
// (two handlers capturing only `self`; a state of a 36-character id, a short
// description, two integers and one shared_ptr to something all of them
// share), sends each one message (as eventsd's first command does), and
// prints the resident set before and after and the bytes per actor. No
// registry, no storage, no HTTP: what one live actor costs before eventsd
// adds anything. The handles are kept in a vector (8 bytes per actor,
// included in the figure), since CAF destroys an actor nobody references.
//
//   eventsd_actor_floor [--actors=N] [--threads=N] [--batch=N]
//
// N defaults to 1 000 000; --threads is CAF's scheduler.max-threads (default:
// CAF's own, the number of cores but at least 4). Spawns and messages go out
// in batches of --batch (10 000), each awaited before the next: with a
// million actors made runnable at once, CAF 0.17's work stealing crawls for a
// minute or more (double_ended_queue::take_tail walks the victim's whole
// queue while holding both its locks). Prints "key=value" lines, one per
// figure.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <caf/all.hpp>

namespace {

using floor_execute_atom = caf::atom_constant<caf::atom("fl_exec")>;
using floor_passivate_atom = caf::atom_constant<caf::atom("fl_pass")>;

/// Stands for eventsd's per-shard environment: one object, shared by all.
struct shared_env {
  std::string name = "shared by every actor";
};

/// The shape of eventsd's aggregate state (todo::state + env).
struct floor_state {
  std::string id;          // 36 characters, like a UUID: heap-allocated (SSO holds 15)
  std::string description; // short: fits the small-string buffer
  uint8_t status = 0;
  uint64_t version = 0;
  std::shared_ptr<const shared_env> env;
  static inline const char* name = "floor_actor";
};

using floor_actor = caf::typed_actor<
  caf::replies_to<floor_execute_atom, std::string>::with<uint64_t>,
  caf::reacts_to<floor_passivate_atom>>;

std::atomic<uint64_t> initialized{0};
std::atomic<uint64_t> handled{0};

floor_actor::behavior_type floor_behavior(floor_actor::stateful_pointer<floor_state> self,
                                          std::string id, std::shared_ptr<const shared_env> env) {
  self->state.id = std::move(id);
  self->state.env = std::move(env);
  initialized.fetch_add(1, std::memory_order_relaxed);
  return {
    [self](floor_execute_atom, std::string& description) -> uint64_t {
      auto& st = self->state;
      st.description = std::move(description);
      st.status = 1;
      ++st.version;
      handled.fetch_add(1, std::memory_order_relaxed);
      return st.version;
    },
    [self](floor_passivate_atom) { self->quit(); },
  };
}

/// A value in kB of /proc/self/status ("VmRSS", "VmHWM").
uint64_t status_kb(std::string_view key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size()
        && line[key.size()] == ':')
      return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return 0;
}

/// A deterministic 36-character id that looks like a UUID.
std::string make_id(uint64_t i) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08llx-0000-4000-8000-%012llx",
                static_cast<unsigned long long>(i >> 16 & 0xffffffffULL),
                static_cast<unsigned long long>(i * 0x9e3779b97f4aULL & 0xffffffffffffULL));
  return buf;
}

bool wait_for(const std::atomic<uint64_t>& counter, uint64_t n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (counter.load(std::memory_order_relaxed) < n) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

int main(int argc, char** argv) {
  uint64_t n = 1'000'000;
  size_t threads = 0;
  uint64_t batch = 10'000;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.rfind("--actors=", 0) == 0) {
      n = std::strtoull(argv[i] + 9, nullptr, 10);
    } else if (a.rfind("--threads=", 0) == 0) {
      threads = std::strtoull(argv[i] + 10, nullptr, 10);
    } else if (a.rfind("--batch=", 0) == 0) {
      batch = std::strtoull(argv[i] + 8, nullptr, 10);
    } else {
      std::cerr << "usage: eventsd_actor_floor [--actors=N] [--threads=N] [--batch=N]\n";
      return 2;
    }
  }
  if (n == 0 || batch == 0) {
    std::cerr << "--actors and --batch must be at least 1\n";
    return 2;
  }

  caf::actor_system_config cfg;
  if (threads > 0)
    cfg.set("scheduler.max-threads", threads);
  caf::actor_system sys{cfg};
  auto env = std::make_shared<const shared_env>();

  std::vector<floor_actor> handles;
  handles.reserve(n); // part of the figure: 8 bytes per actor
  auto rss_before = status_kb("VmRSS");

  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    handles.push_back(sys.spawn(floor_behavior, make_id(i), env));
    if ((i + 1) % batch == 0 && !wait_for(initialized, i + 1)) {
      std::cerr << "only " << initialized.load() << " of " << i + 1 << " actors started in 5 min\n";
      return 1;
    }
  }
  if (!wait_for(initialized, n)) {
    std::cerr << "only " << initialized.load() << " of " << n << " actors started in 5 min\n";
    return 1;
  }
  auto spawn_s = seconds_since(t0);
  auto rss_spawned = status_kb("VmRSS");

  t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    caf::anon_send(handles[i], floor_execute_atom::value, std::string{"benchmark todo"});
    if ((i + 1) % batch == 0 && !wait_for(handled, i + 1)) {
      std::cerr << "only " << handled.load() << " of " << i + 1 << " messages handled in 5 min\n";
      return 1;
    }
  }
  if (!wait_for(handled, n)) {
    std::cerr << "only " << handled.load() << " of " << n << " messages handled in 5 min\n";
    return 1;
  }
  auto message_s = seconds_since(t0);
  // Let the scheduler's workers go idle and free what they cache.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto rss_after = status_kb("VmRSS");
  auto hwm = status_kb("VmHWM");

  using impl = floor_actor::stateful_base<floor_state>;
  auto per_actor = [&](uint64_t kb) { return static_cast<double>(kb - rss_before) * 1024 / n; };
  std::printf("actors=%llu\n", static_cast<unsigned long long>(n));
  std::printf("rss_before_kb=%llu\n", static_cast<unsigned long long>(rss_before));
  std::printf("rss_spawned_kb=%llu\n", static_cast<unsigned long long>(rss_spawned));
  std::printf("rss_after_kb=%llu\n", static_cast<unsigned long long>(rss_after));
  std::printf("hwm_kb=%llu\n", static_cast<unsigned long long>(hwm));
  std::printf("bytes_per_actor_spawned=%.0f\n", per_actor(rss_spawned));
  std::printf("bytes_per_actor=%.0f\n", per_actor(rss_after));
  std::printf("sizeof_event_based_actor=%zu\n", sizeof(caf::event_based_actor));
  std::printf("sizeof_typed_stateful_actor=%zu\n", sizeof(impl));
  std::printf("sizeof_actor_control_block=%zu\n", sizeof(caf::actor_control_block));
  std::printf("sizeof_actor_storage=%zu\n", sizeof(caf::actor_storage<impl>));
  std::printf("sizeof_state=%zu\n", sizeof(floor_state));
  std::printf("spawn_s=%.2f\n", spawn_s);
  std::printf("message_s=%.2f\n", message_s);
  std::fflush(stdout);

  for (auto& h : handles)
    caf::anon_send(h, floor_passivate_atom::value);
  handles.clear();
  handles.shrink_to_fit();
  return 0;
}
