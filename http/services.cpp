#include "http/services.hpp"

#include <algorithm>

#include "core/lifeline.hpp"

namespace eventsd::http {

bridge::bridge(caf::actor_system& sys, size_t actors) {
  for (size_t i = 0; i < std::max<size_t>(1, actors); ++i)
    actors_.push_back(sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
      core::end_on_exception(self);
      return {
        [self](run_atom, const core::bridge_job& job) { job(self); },
      };
    }));
}

void bridge::run(core::bridge_job job) {
  auto& target = actors_[next_.fetch_add(1, std::memory_order_relaxed) % actors_.size()];
  caf::anon_send(target, run_atom_v, std::move(job));
}

void bridge::stop() {
  for (auto& a : actors_)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
}

uint64_t drain_hooks::add(std::function<void()> hook) {
  std::unique_lock lock{mtx_};
  if (draining_) {
    lock.unlock();
    hook();
    return 0;
  }
  hooks_.emplace(++next_, std::move(hook));
  return next_;
}

void drain_hooks::remove(uint64_t id) {
  std::lock_guard lock{mtx_};
  hooks_.erase(id);
}

void drain_hooks::drain() {
  std::map<uint64_t, std::function<void()>> hooks;
  {
    std::lock_guard lock{mtx_};
    draining_ = true;
    hooks.swap(hooks_);
  }
  for (auto& [id, hook] : hooks)
    hook();
}

void first_answers::expire(clock::time_point now) {
  while (!settled_.empty() && now - settled_.front().first > kept) {
    entries_.erase(settled_.front().second); // settled: no followers
    settled_.pop_front();
  }
}

first_answers::settled first_answers::settle(uint64_t position, unsigned status) {
  std::map<uint64_t, std::function<void(unsigned)>> followers;
  {
    std::lock_guard lock{mtx_};
    auto now = clock::now();
    expire(now);
    auto& e = entries_[position];
    if (e.status)
      return {*e.status, false};
    e.status = status;
    followers.swap(e.followers);
    settled_.emplace_back(now, position);
  }
  for (auto& [id, then] : followers)
    then(status);
  return {status, true};
}

first_answers::following first_answers::follow(uint64_t position,
                                               std::function<void(unsigned)> then) {
  std::lock_guard lock{mtx_};
  expire(clock::now());
  auto& e = entries_[position];
  if (e.status)
    return {e.status, 0};
  e.followers.emplace(++next_, std::move(then));
  return {std::nullopt, next_};
}

void first_answers::unfollow(uint64_t position, uint64_t id) {
  std::lock_guard lock{mtx_};
  auto e = entries_.find(position);
  if (e == entries_.end())
    return;
  e->second.followers.erase(id);
  if (e->second.followers.empty() && !e->second.status)
    entries_.erase(e);
}

const actors::log_reader_actor& services::log_reader() {
  return log_readers[next_log_reader.fetch_add(1, std::memory_order_relaxed)
                     % log_readers.size()];
}

const projections::read_model_reader_actor& services::read_model_reader() {
  auto n = read_model_readers.size();
  auto first = next_read_model_reader.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < n && read_model_health.size() == n; ++i) {
    auto k = (first + i) % n;
    if (!read_model_health[k]->failing.load(std::memory_order_relaxed))
      return read_model_readers[k];
  }
  return read_model_readers[first % n]; // all failing: any answers why
}

bool services::no_read_model_reader_connected_yet() const {
  return !read_model_health.empty()
         && std::all_of(read_model_health.begin(), read_model_health.end(),
                        [](const auto& h) { return h->never_connected.load(); });
}

size_t services::failing_read_model_readers() const {
  return static_cast<size_t>(std::count_if(read_model_health.begin(), read_model_health.end(),
                                           [](const auto& h) { return h->failing.load(); }));
}

} // namespace eventsd::http
