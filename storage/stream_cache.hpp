// A bounded, least-recently-used cache of whole short streams as the event
// log read them, so that a stream read again (a todo's history) costs no
// RocksDB reads. The log keeps it exact: while an append to a stream is
// being written the stream is not served from here, the append drops its
// entry, and a read that raced with the append is not kept.
//
// Thread-safety: every member may be called from any thread. Each of the
// shards has its own mutex, held only for a lookup or an insert (never
// during I/O).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "storage/event_log.hpp"

namespace eventsd::storage {

class stream_cache {
public:
  /// A cached stream: all of its events, version 1 first.
  using events = std::shared_ptr<const std::vector<recorded_event>>;

  /// Holds streams of at most `max_events` events, at most about
  /// `budget_bytes` of them in all (0: holds nothing).
  stream_cache(size_t budget_bytes, size_t max_events);

  /// The cached events of `stream`, or null (counted as a hit when found).
  events find(std::string_view stream);

  /// Taken before reading `stream` from the store, handed to `insert` after.
  uint64_t ticket(std::string_view stream) const;

  /// Keeps `all`, the whole of `stream` as read from the store after
  /// `ticket` was taken, unless an append to one of the streams of its
  /// shard ended since (`end_write`: the read may predate it) or one to
  /// `stream` is being written. Streams longer than `max_events` or than a
  /// shard's budget are not kept.
  void insert(std::string_view stream, uint64_t ticket, events all);

  /// An append to `stream` is about to be written: until the matching
  /// `end_write`, `find` answers null for it (readers see the store, where
  /// the append may become visible at any moment) and nothing is kept.
  void begin_write(std::string_view stream);

  /// The append of the matching `begin_write` is visible (or failed): drops
  /// `stream`'s entry and refuses reads that began before. REQUIRES: called
  /// before the append is acknowledged.
  void end_write(std::string_view stream);

  /// Drops every entry and refuses reads that began before (after a failed
  /// write, or a recovery that may have made part of one visible).
  void clear();

  /// True when streams of `n` events may be kept.
  bool holds(uint64_t n) const { return n <= max_events_ && shard_budget_ > 0; }

  stream_cache_stats statistics() const;

  /// Counts a lookup that found nothing and went to the store (to fill).
  void count_miss() { misses_.fetch_add(1, std::memory_order_relaxed); }

private:
  struct entry {
    std::string stream;
    events all;
    size_t bytes = 0;
  };
  struct hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct shard {
    mutable std::mutex mutex;
    /// Bumped by every `end_write` and `clear`: a read with an older ticket
    /// may be stale.
    uint64_t generation = 0;
    std::list<entry> lru; ///< most recently used first
    std::unordered_map<std::string_view, std::list<entry>::iterator, hash, std::equal_to<>> index;
    size_t bytes = 0;
    /// Hashes of the streams with an append being written, once per append
    /// (a few at a time; no allocation once grown). Another stream with the
    /// same hash is only not served meanwhile.
    std::vector<size_t> writing;
    bool is_written(std::string_view stream) const {
      return std::find(writing.begin(), writing.end(), hash{}(stream)) != writing.end();
    }
  };
  static constexpr size_t shard_count = 32;

  shard& shard_of(std::string_view stream) const {
    return shards_[hash{}(stream) % shard_count];
  }
  /// Moves `stream`'s entry, if any, to `out` (to be freed after the lock).
  /// REQUIRES: `s.mutex` held.
  static void take(shard& s, std::string_view stream, std::list<entry>& out);

  size_t shard_budget_;
  size_t max_events_;
  mutable std::array<shard, shard_count> shards_;
  std::atomic<uint64_t> hits_{0};
  std::atomic<uint64_t> misses_{0};
};

} // namespace eventsd::storage
