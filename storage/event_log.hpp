// The event log on RocksDB.
//
// Thread-safety: `append` must be called by one thread at a time (the single
// log writer assigns positions); every read operation may run concurrently
// with `append` and with other reads, from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/result.hpp"

namespace eventsd::storage {

/// Expected version that demands the stream does not exist yet.
inline constexpr uint64_t no_stream = 0;

/// Expected version that skips the optimistic concurrency check.
inline constexpr uint64_t any_version = UINT64_MAX;

/// One event as stored in the log.
struct recorded_event {
  std::string id;          ///< event id, canonical lowercase UUID
  std::string stream;      ///< e.g. "todo-<uuid>"
  std::string type;        ///< e.g. "created"
  uint64_t version = 0;    ///< 1-based version inside its stream
  uint64_t position = 0;   ///< 1-based position in `$all`
  int64_t occurred_at_ms = 0; ///< milliseconds since the Unix epoch, UTC
  std::string data;        ///< event payload as JSON text

  friend bool operator==(const recorded_event&, const recorded_event&) = default;
};

/// An event proposed for appending; version and position are assigned by the log.
struct proposed_event {
  std::string id;
  std::string type;
  std::string data;
  int64_t occurred_at_ms = 0;

  friend bool operator==(const proposed_event&, const proposed_event&) = default;
};

/// An idempotency key claimed by an append (API: `Idempotency-Key`).
struct idempotency_claim {
  std::string key;         ///< client-chosen, at most 128 characters
  std::string fingerprint; ///< digest of the request that first used the key
  int64_t now_ms = 0;      ///< time of this request, for expiry
  int64_t retention_ms = 24LL * 3600 * 1000; ///< keys older than this are expired

  friend bool operator==(const idempotency_claim&, const idempotency_claim&) = default;
};

/// One stream's append: all of `events` or nothing.
struct append_request {
  std::string stream;
  uint64_t expected_version = any_version; ///< `no_stream`, a version, or `any_version`
  std::vector<proposed_event> events;      ///< REQUIRES: not empty
  std::optional<idempotency_claim> idempotency;
  /// The log writer refuses the request unwritten once this has passed (the
  /// gateway's request timeout); the default is no deadline. The storage
  /// itself ignores it.
  std::chrono::steady_clock::time_point deadline{};

  friend bool operator==(const append_request&, const append_request&) = default;
};

/// What an append did.
struct append_result {
  std::string stream;          ///< the stream written (for a replay: the original one)
  uint64_t version = 0;        ///< stream version after the append
  uint64_t first_position = 0; ///< position of the first appended event
  uint64_t last_position = 0;  ///< position of the last appended event
  bool replayed = false;       ///< true: idempotency key seen before, nothing appended
  /// For a replay: the status of the first answer when one was recorded
  /// (see mark_idempotency_answer; 0: none).
  uint64_t first_answer = 0;

  friend bool operator==(const append_result&, const append_result&) = default;
};

/// A stored aggregate snapshot: the folded state after `version`.
struct snapshot_record {
  uint64_t version = 0;
  std::string state; ///< opaque bytes, encoded by the aggregate

  friend bool operator==(const snapshot_record&, const snapshot_record&) = default;
};

/// A stream listed by recency.
struct stream_summary {
  std::string stream;
  uint64_t version = 0;       ///< current version (number of events)
  uint64_t last_position = 0; ///< position of its newest event

  friend bool operator==(const stream_summary&, const stream_summary&) = default;
};

/// Options for opening the log.
struct log_options {
  std::string dir;              ///< RocksDB directory; created when missing
  bool sync = true;             ///< fsync the WAL on every append batch (unsafe when false)
  size_t block_cache_mb = 128;  ///< RocksDB block cache, memtables charged to it (MiB)
  size_t stream_cache_mb = 64;  ///< whole short streams kept as read (MiB; 0: none)
};

/// Whether a stream read may fill the stream cache (see `event_log::cached_stream`).
enum class stream_caching : uint8_t {
  use = 1, ///< answered from the cache when it holds the stream; fills nothing
  fill,    ///< also keeps a whole short stream it read: for reads likely to
           ///< come again (histories), not for an aggregate's recovery
};

/// What the stream cache holds and did (see `event_log::cached_stream`).
struct stream_cache_stats {
  uint64_t hits = 0;    ///< stream reads answered from it
  uint64_t misses = 0;  ///< reads with `stream_caching::fill` that went to RocksDB
  uint64_t streams = 0; ///< streams held
  uint64_t bytes = 0;   ///< their estimated size
};

/// The append-only event log: streams, the global `$all` order, idempotency
/// keys and snapshots, all in one RocksDB database.
class event_log {
public:
  /// Opens (or creates) the log in `opts.dir`.
  static result<std::unique_ptr<event_log>> open(const log_options& opts);

  ~event_log();
  event_log(const event_log&) = delete;
  event_log& operator=(const event_log&) = delete;

  /// Appends every request of `batch` in one RocksDB WriteBatch (and one
  /// fsync when `sync`). Each request gets its own result: a version
  /// conflict or idempotency conflict fails only that request. When the
  /// write itself fails, the requests it would have appended fail with
  /// `not_writable`, as do the results judged on them (a replay or conflict
  /// with this batch's own writes); nothing is appended (positions are not
  /// consumed). Results judged on what was durable before stand.
  /// REQUIRES: called from one thread at a time.
  std::vector<result<append_result>> append(std::span<const append_request> batch);

  /// Events of `stream` with version >= `from_version`, at most `limit`,
  /// ascending. Fails with `stream_not_found` for an unknown stream.
  result<std::vector<recorded_event>> read_stream(std::string_view stream,
                                                  uint64_t from_version, size_t limit,
                                                  stream_caching caching
                                                  = stream_caching::use) const;

  /// All events of `stream` when the stream cache holds them, else null;
  /// never reads RocksDB, so it may be called where nothing may block. The
  /// cache holds whole short streams (up to 64 events) that `read_stream`
  /// read whole with `stream_caching::fill`, and loses each one when an
  /// append to it becomes visible: what it returns is as current as
  /// `read_stream`'s answer.
  std::shared_ptr<const std::vector<recorded_event>> cached_stream(std::string_view stream) const;

  /// Counters of the stream cache.
  stream_cache_stats stream_cache_statistics() const;

  /// Events of `$all` with position >= `from_position`, at most `limit`, ascending.
  result<std::vector<recorded_event>> read_all(uint64_t from_position, size_t limit) const;

  /// One event by its id. Fails with `event_not_found`.
  result<recorded_event> find_event(std::string_view event_id) const;

  /// Current version of `stream`. Fails with `stream_not_found`.
  result<uint64_t> stream_version(std::string_view stream) const;

  /// Streams ordered by their newest event, newest first, starting strictly
  /// below `before_position` (0 = from the head).
  result<std::vector<stream_summary>> list_streams(uint64_t before_position,
                                                   size_t limit) const;

  /// Position of the newest event in `$all` (0 when empty).
  uint64_t head() const;

  /// This store's identity: a UUID RocksDB made when the store was created,
  /// kept across restarts and copies of the directory. Read models record it
  /// to tell their own store from another one.
  const std::string& store_id() const;

  /// False after a failed write (a full disk, say) until the store has
  /// recovered: the next `append`, or `try_resume`, retries.
  bool writable() const;

  /// Time since the last failed write (or failed recovery); nullopt when none
  /// failed since the store was opened. A store that recovers after each
  /// failed write and fails again with the next (a full disk under load) is
  /// `writable()` between them: this is what tells.
  std::optional<std::chrono::milliseconds> since_write_failure() const;

  /// True when `open` found the disk full and opened the store read-only:
  /// reads work, every write fails with `not_writable`, and nothing but a
  /// restart (with space freed) makes it writable.
  bool read_only() const;

  /// How long the append being written has been waiting for RocksDB (its
  /// write and fsync); zero when none is being written. A stalled disk
  /// shows here before any write fails.
  std::chrono::milliseconds write_waiting() const;

  /// Retries the recovery of a store that is not `writable()`; true when it
  /// is writable afterwards. Blocks like `append` (RocksDB may flush).
  bool try_resume();

  /// Why the store can no longer recover while open, when it cannot: RocksDB
  /// rates some failures fatal (a new WAL file that could not be created,
  /// say) and refuses to resume after them, whatever is freed since; only
  /// reopening the store (a restart, which recovers every durable event)
  /// makes it writable again. nullopt while a retry may still succeed.
  std::optional<std::string> unrecoverable() const;

  /// Stores `snap` as the snapshot of `stream` at `snap.version`, beside
  /// those at other versions (not fsynced: a snapshot is a cache that can
  /// always be rebuilt from the log).
  result<void> save_snapshot(std::string_view stream, const snapshot_record& snap);

  /// The newest snapshot of `stream` at or before version `through` (by
  /// default its newest). Fails with `snapshot_not_found`.
  result<snapshot_record>
  load_snapshot(std::string_view stream,
                uint64_t through = std::numeric_limits<uint64_t>::max()) const;

  /// Records the status of the first answer to the request that claimed
  /// `key` (where it depends on more than the append: unit-of-work's 201 or
  /// 202), for its replays to answer the same, and returns the status now
  /// recorded: the first status recorded stays (a later call changes
  /// nothing and returns it). Not synced: written to the WAL before the
  /// answer is sent, it outlives a crash of the process right after, and the
  /// next append's fsync makes it durable. A key no longer stored (purged)
  /// is left alone (returns `status`).
  result<uint64_t> mark_idempotency_answer(std::string_view key, uint64_t status);

  /// Deletes idempotency keys created before `older_than_ms`; returns how many.
  result<size_t> purge_idempotency_keys(int64_t older_than_ms);

  /// Work the server accepted and must still do after a crash: an online
  /// rebuild answered 202, say. `name` is kept with `value` (which tells one
  /// request from another), fsynced unless the log was opened without sync,
  /// until `finish_pending_work`; noting it again replaces the value. Fails
  /// with `not_writable` when it cannot be recorded (a write whose fsync
  /// failed may still be found after a restart).
  result<void> note_pending_work(std::string_view name, std::string_view value);

  /// The value `name` was noted with, nullopt when it is not noted.
  result<std::optional<std::string>> pending_work(std::string_view name) const;

  /// `name` is done: forgotten, when its value is `only_if` (or whatever
  /// its value, without `only_if`); nothing when it is not noted. Not
  /// synced: a crash right after only does the work once more.
  result<void> finish_pending_work(std::string_view name,
                                   std::optional<std::string_view> only_if = std::nullopt);

private:
  struct impl;
  explicit event_log(std::unique_ptr<impl> pimpl);
  std::unique_ptr<impl> impl_;
};

} // namespace eventsd::storage
