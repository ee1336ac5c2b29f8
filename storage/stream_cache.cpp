#include "storage/stream_cache.hpp"

namespace eventsd::storage {

namespace {

/// What an entry costs: its strings and the bookkeeping around them.
size_t footprint(std::string_view stream, const std::vector<recorded_event>& all) {
  size_t n = 2 * stream.size() + 160;
  for (const auto& e : all)
    n += sizeof(recorded_event) + e.id.size() + e.stream.size() + e.type.size() + e.data.size();
  return n;
}

} // namespace

stream_cache::stream_cache(size_t budget_bytes, size_t max_events)
  : shard_budget_(budget_bytes / shard_count), max_events_(max_events) {}

stream_cache::events stream_cache::find(std::string_view stream) {
  auto& s = shard_of(stream);
  std::lock_guard<std::mutex> guard{s.mutex};
  auto i = s.index.find(stream);
  if (i == s.index.end() || s.is_written(stream))
    return nullptr;
  s.lru.splice(s.lru.begin(), s.lru, i->second);
  hits_.fetch_add(1, std::memory_order_relaxed);
  return i->second->all;
}

uint64_t stream_cache::ticket(std::string_view stream) const {
  auto& s = shard_of(stream);
  std::lock_guard<std::mutex> guard{s.mutex};
  return s.generation;
}

void stream_cache::insert(std::string_view stream, uint64_t ticket, events all) {
  if (!all || !holds(all->size()))
    return;
  const size_t bytes = footprint(stream, *all);
  if (bytes > shard_budget_)
    return;
  auto& s = shard_of(stream);
  std::list<entry> dropped; // freed after the lock is released
  {
    std::lock_guard<std::mutex> guard{s.mutex};
    if (s.generation != ticket || s.is_written(stream))
      return;
    take(s, stream, dropped);
    s.lru.push_front(entry{std::string{stream}, std::move(all), bytes});
    s.index.emplace(s.lru.front().stream, s.lru.begin());
    s.bytes += bytes;
    while (s.bytes > shard_budget_) {
      auto last = std::prev(s.lru.end());
      s.bytes -= last->bytes;
      s.index.erase(last->stream);
      dropped.splice(dropped.begin(), s.lru, last);
    }
  }
}

void stream_cache::begin_write(std::string_view stream) {
  auto& s = shard_of(stream);
  std::list<entry> dropped;
  std::lock_guard<std::mutex> guard{s.mutex};
  s.writing.push_back(hash{}(stream));
  take(s, stream, dropped);
}

void stream_cache::end_write(std::string_view stream) {
  auto& s = shard_of(stream);
  std::list<entry> dropped;
  std::lock_guard<std::mutex> guard{s.mutex};
  ++s.generation;
  if (auto i = std::find(s.writing.begin(), s.writing.end(), hash{}(stream));
      i != s.writing.end())
    s.writing.erase(i);
  take(s, stream, dropped);
}

void stream_cache::clear() {
  for (auto& s : shards_) {
    std::list<entry> dropped;
    std::lock_guard<std::mutex> guard{s.mutex};
    ++s.generation;
    s.index.clear();
    dropped.swap(s.lru);
    s.bytes = 0;
  }
}

void stream_cache::take(shard& s, std::string_view stream, std::list<entry>& out) {
  auto i = s.index.find(stream);
  if (i == s.index.end())
    return;
  auto it = i->second;
  s.bytes -= it->bytes;
  s.index.erase(i);
  out.splice(out.end(), s.lru, it);
}

stream_cache_stats stream_cache::statistics() const {
  stream_cache_stats st;
  st.hits = hits_.load(std::memory_order_relaxed);
  st.misses = misses_.load(std::memory_order_relaxed);
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> guard{s.mutex};
    st.streams += s.index.size();
    st.bytes += s.bytes;
  }
  return st;
}

} // namespace eventsd::storage
