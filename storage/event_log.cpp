// The event log on RocksDB.
//
// Thread-safety: every write (appends, idempotency purges and answers, snapshots,
// pending-work notes, Resume attempts) is serialised by `write_mutex` (the
// single writer owns position assignment); reads run concurrently with them,
// without a RocksDB snapshot (only find_event takes one: its two reads must
// agree). `rocksdb::Status` never leaves this file.
#include "storage/event_log.hpp"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <unordered_map>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/iterator.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/snapshot.h>
#include <rocksdb/slice.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/write_buffer_manager.h>
#include <rocksdb/write_batch.h>

#include "storage/keys.hpp"
#include "storage/stream_cache.hpp"

namespace eventsd::storage {

const char* to_string(storage_errc x) {
  switch (x) {
    case storage_errc::wrong_expected_version:
      return "wrong_expected_version";
    case storage_errc::stream_not_found:
      return "stream_not_found";
    case storage_errc::event_not_found:
      return "event_not_found";
    case storage_errc::snapshot_not_found:
      return "snapshot_not_found";
    case storage_errc::idempotency_conflict:
      return "idempotency_conflict";
    case storage_errc::not_writable:
      return "not_writable";
    case storage_errc::corrupted:
      return "corrupted";
    case storage_errc::io_error:
      return "io_error";
  }
  return "unknown";
}

namespace {

using keys::stream_head;
using keys::idempotency_record;

/// Idempotency purges delete at most this many keys per WriteBatch, so the
/// writer lock is never held for a long scan.
constexpr size_t purge_chunk = 1024;

/// Upper bound for `reserve` so that a huge `limit` does not allocate up front.
constexpr size_t max_reserve = 1024;

/// Name of the column family holding `$all`'s event records.
constexpr const char* events_family = "events";
constexpr const char* event_ids_family = "event_ids";

/// `st` as clients are told it: without the context RocksDB adds after the
/// reason ("While appending to file: <path>"), which names files of the
/// server's disk. The log keeps the whole status.
std::string public_reason(const rocksdb::Status& st) {
  if (st.IsNotSupported() && st.getState() != nullptr)
    return st.getState(); // eventsd's own reason (a read-only store), without "Not implemented"
  auto text = st.ToString();
  if (auto at = text.find(": While "); at != std::string::npos)
    text.resize(at);
  if (auto path = text.find(": /"); path != std::string::npos)
    text.resize(path);
  return text;
}

rocksdb::Slice as_slice(std::string_view s) {
  return rocksdb::Slice{s.data(), s.size()};
}

std::string_view as_view(const rocksdb::Slice& s) {
  return std::string_view{s.data(), s.size()};
}

/// Translates a failed read status.
storage_error read_error(const rocksdb::Status& st, std::string_view what) {
  auto code = st.IsCorruption() ? storage_errc::corrupted : storage_errc::io_error;
  return storage_error{code, std::string{what} + ": " + public_reason(st)};
}

storage_error corrupted(std::string_view what, std::string_view key) {
  std::string detail{what};
  detail += " (key of ";
  detail += std::to_string(key.size());
  detail += " bytes)";
  return storage_error{storage_errc::corrupted, std::move(detail)};
}

storage_error unexpected(storage_errc code, const char* what) {
  return storage_error{code, std::string{"unexpected exception: "} + what};
}

/// A `ReadOptions` over the keys from `lo` (inclusive) to `up` (exclusive)
/// that keeps its bounds alive.
struct bounded_read {
  std::string lower;
  std::string upper;
  rocksdb::Slice lower_slice;
  rocksdb::Slice upper_slice;
  rocksdb::ReadOptions options;

  bounded_read(std::string lo, std::string up) : lower(std::move(lo)), upper(std::move(up)) {
    lower_slice = as_slice(lower);
    upper_slice = as_slice(upper);
    options.iterate_lower_bound = &lower_slice;
    options.iterate_upper_bound = &upper_slice;
    // The default family has a prefix extractor (stream index only): every
    // read in key order says so, and only read_stream uses the prefix.
    options.total_order_seek = true;
  }

  bounded_read(const bounded_read&) = delete;
  bounded_read& operator=(const bounded_read&) = delete;
};

/// The stream part of a stream-index key (`s` + esc(stream) + 0x00). RocksDB
/// keeps these prefixes in the bloom filters, so reading one stream seeks
/// only in the files holding its entries, not in every sorted run (the cost
/// of a history read grew with the store's size before).
class stream_index_prefix final : public rocksdb::SliceTransform {
public:
  const char* Name() const override { return "eventsd.StreamIndexPrefix.1"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    auto* end = static_cast<const char*>(std::memchr(key.data(), 0, key.size()));
    return {key.data(), static_cast<size_t>(end - key.data()) + 1};
  }
  bool InDomain(const rocksdb::Slice& key) const override {
    return key.size() > 1 && key[0] == keys::stream_prefix
           && std::memchr(key.data(), 0, key.size()) != nullptr;
  }
};

/// Streams of at most this many events are kept whole in the stream cache.
constexpr size_t cached_stream_max_events = 64;

/// Events of `all` (a whole stream) with version >= `from` (>= 1), at most `limit`.
std::vector<recorded_event> slice(const std::vector<recorded_event>& all, uint64_t from,
                                  size_t limit) {
  if (from > all.size())
    return {};
  auto first = all.begin() + static_cast<ptrdiff_t>(from - 1);
  auto n = std::min<uint64_t>(limit, all.size() - (from - 1));
  return {first, first + static_cast<ptrdiff_t>(n)};
}

/// The streams a batch extends are not served from the stream cache while it
/// is written; once it is visible (or failed) their entries are dropped.
class writing_streams {
public:
  writing_streams(stream_cache& cache, std::vector<std::string_view> streams)
    : cache_(cache), streams_(std::move(streams)) {
    for (auto s : streams_)
      cache_.begin_write(s);
  }
  ~writing_streams() {
    for (auto s : streams_)
      cache_.end_write(s);
  }
  writing_streams(const writing_streams&) = delete;
  writing_streams& operator=(const writing_streams&) = delete;

private:
  stream_cache& cache_;
  std::vector<std::string_view> streams_;
};

bool field_too_large(std::string_view s) {
  return s.size() > std::numeric_limits<uint32_t>::max();
}

} // namespace

struct event_log::impl {
  std::unique_ptr<rocksdb::DB> db;
  /// The column family of `$all`'s event records (the `a` keys); every other
  /// key kind lives in the default one. Owned; released before `db` closes.
  rocksdb::ColumnFamilyHandle* events = nullptr;
  rocksdb::ColumnFamilyHandle* event_ids = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf = nullptr;
  std::string store_id; ///< RocksDB's DB identity, read at open
  /// Whole short streams as read, for reads that come again (histories).
  stream_cache cache;

  explicit impl(size_t cache_bytes) : cache(cache_bytes, cached_stream_max_events) {}
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;
  ~impl() { release_families(); }

  /// RocksDB wants the handles gone before the database closes.
  void release_families() {
    if (!db)
      return;
    for (auto** h : {&events, &event_ids, &default_cf})
      if (*h != nullptr) {
        db->DestroyColumnFamilyHandle(*h);
        *h = nullptr;
      }
  }
  bool sync = true;
  /// Opened with OpenForReadOnly because the disk was full (see `open`):
  /// every write is refused until a restart.
  bool read_only = false;
  /// RocksDB's LOCK file, held by us when read_only (RocksDB holds it otherwise).
  rocksdb::FileLock* lock = nullptr;
  /// Serialises the writers: `append`, `purge_idempotency_keys`,
  /// `save_snapshot` (the loaders' threads), `mark_idempotency_answer`, the
  /// pending-work notes and `try_resume`.
  std::mutex write_mutex;
  /// Position of the newest durable event; written only under `write_mutex`.
  std::atomic<uint64_t> head{0};
  /// A write failed: RocksDB may hold a background error that refuses every
  /// later write until `Resume()` succeeds (cleared only under `write_mutex`;
  /// set by any failed write; read by `writable()` from any thread).
  std::atomic<bool> needs_resume{false};
  /// steady_clock nanoseconds of the last failed write (or resume); 0: none.
  std::atomic<int64_t> last_failure_ns{0};
  /// A write failed: the store needs a resume, and the time is recorded.
  /// The first failure after the store was writable is logged (with the
  /// file it concerns, which clients are not told).
  /// REQUIRES: `write_mutex` held.
  void note_write_failure(const rocksdb::Status& why) {
    last_failure_ns.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                          std::memory_order_relaxed);
    needs_resume.store(true, std::memory_order_release);
    if (unwritable_logged)
      return;
    unwritable_logged = true;
    std::fprintf(stderr,
                 "eventsd: event store not writable (writes answer 503, reads go on; each "
                 "write retries): %s\n",
                 why.ToString().c_str());
  }
  /// The failure above was logged and not yet its end (under `write_mutex`).
  bool unwritable_logged = false;
  /// Resume() refused for good (see event_log::unrecoverable); `fatal_reason`
  /// is written once, before `fatal` is set.
  std::atomic<bool> fatal{false};
  std::string fatal_reason;
  /// steady_clock nanoseconds when the write in progress began; 0: none.
  std::atomic<int64_t> write_began_ns{0};

  /// Runs `write` with write_began_ns set (write_waiting(), /readyz, tell
  /// how long it has waited for the disk); its result.
  /// REQUIRES: `write_mutex` held.
  template <class F>
  rocksdb::Status timed_write(F&& write) {
    write_began_ns.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                         std::memory_order_relaxed);
    auto st = std::forward<F>(write)();
    write_began_ns.store(0, std::memory_order_relaxed);
    return st;
  }

  /// Tries to make the store writable again after a failed write.
  /// REQUIRES: `write_mutex` held.
  rocksdb::Status resume_if_needed() {
    if (!needs_resume.load(std::memory_order_relaxed))
      return rocksdb::Status::OK();
    if (read_only)
      return rocksdb::Status::NotSupported(
        "opened read-only because its disk was full when eventsd started; free space and "
        "restart eventsd");
    // Recover once the fault has cleared (disk space freed, device back).
    // Cleared first: a write failing on another thread meanwhile sets it again.
    needs_resume.store(false, std::memory_order_release);
    auto resumed = db->Resume();
    // A failed batch may have become visible (its WAL record written, say):
    // what readers cached since the failure may lack it.
    cache.clear();
    if (!resumed.ok()) {
      note_write_failure(resumed);
      // RocksDB answers a fatal background error with that error, every time.
      if (resumed.severity() >= rocksdb::Status::Severity::kFatalError
          && !fatal.load(std::memory_order_relaxed)) {
        fatal_reason = resumed.ToString();
        fatal.store(true, std::memory_order_release);
        std::fprintf(stderr, "eventsd: the event store cannot recover from this failure while "
                             "open (RocksDB rates it fatal); a restart reopens it: %s\n",
                     fatal_reason.c_str());
      }
      return resumed;
    }
    if (auto last = last_position(); last && *last > head.load())
      head.store(*last, std::memory_order_release);
    if (unwritable_logged) {
      unwritable_logged = false;
      std::fprintf(stderr, "eventsd: event store writable again (head at position %llu)\n",
                   static_cast<unsigned long long>(head.load()));
    }
    return rocksdb::Status::OK();
  }
  /// Heads of streams appended to since the last failed write, so that an
  /// append to a stream written recently needs no point read (only under
  /// `write_mutex`; the log is the only writer of heads). Holds the heads of
  /// the batch being built too; cleared when a write fails, and when it
  /// outgrows `head_cache_max` between batches.
  std::unordered_map<std::string, stream_head> head_cache;
  static constexpr size_t head_cache_max = 65'536;

  /// Called before every write that goes through the WAL. After a failed
  /// write, RocksDB's Resume() flushes the memtables, and that flush is what
  /// moves writes to a new WAL file (retrying the failed one's buffer on the
  /// way). When the default family's active memtable is empty it flushes
  /// nothing, the WAL writer that failed stays, and the next write to it
  /// aborts the process (Debian's RocksDB 7.8 keeps its assertions; a full
  /// disk right after a start or a flush did it). So before a write finds
  /// that memtable empty it gets one entry that bypasses the WAL: a
  /// tombstone of a key that never exists.
  void keep_memtable_nonempty() {
    uint64_t entries = 0;
    if (db->GetIntProperty(default_cf, rocksdb::DB::Properties::kNumEntriesActiveMemTable,
                           &entries)
        && entries > 0)
      return;
    rocksdb::WriteOptions no_wal;
    no_wal.disableWAL = true;
    db->Delete(no_wal, default_cf, resume_marker); // best effort; the write below reports
  }
  static constexpr std::string_view resume_marker{"\0eventsd-resume-marker", 22};

  /// Writes one key of the default family, or deletes it (`value` nullopt),
  /// once a store that needs it is resumed: as every write through the
  /// WAL, under the writers' lock. A failure leaves the store to be resumed;
  /// its error starts with `what` (when not empty).
  /// REQUIRES: `write_mutex` held.
  result<void> write_one(std::string_view what, const std::string& key,
                         std::optional<std::string_view> value, bool synced) {
    auto failed = [what](const rocksdb::Status& st) {
      return storage_error{storage_errc::not_writable,
                           (what.empty() ? "" : std::string{what} + ": ") + public_reason(st)};
    };
    if (auto st = resume_if_needed(); !st.ok())
      return failed(st);
    rocksdb::WriteOptions wo;
    wo.sync = synced;
    keep_memtable_nonempty();
    // A synced write holds the writers' lock for as long as the disk takes,
    // as an append does: write_waiting() (/readyz) tells it the same way.
    auto write = [&] { return value ? db->Put(wo, key, as_slice(*value)) : db->Delete(wo, key); };
    auto st = synced ? timed_write(write) : write();
    if (!st.ok()) {
      note_write_failure(st);
      return failed(st);
    }
    return {};
  }

  /// Point lookup; nullopt when absent, error on I/O failure.
  result<std::optional<std::string>> get(const rocksdb::ReadOptions& ro,
                                         const std::string& key,
                                         rocksdb::ColumnFamilyHandle* cf = nullptr) const {
    std::string value;
    auto st = db->Get(ro, cf ? cf : db->DefaultColumnFamily(), key, &value);
    if (st.ok())
      return std::optional<std::string>{std::move(value)};
    if (st.IsNotFound())
      return std::optional<std::string>{};
    return read_error(st, "get");
  }

  /// The stream's head; nullopt when the stream has no events.
  result<std::optional<stream_head>> get_head(const rocksdb::ReadOptions& ro,
                                              std::string_view stream) const {
    auto raw = get(ro, keys::head_key(stream));
    if (!raw)
      return raw.error();
    if (!raw->has_value())
      return std::optional<stream_head>{};
    auto head = keys::decode_head(**raw);
    if (!head)
      return corrupted("stream head record", stream);
    return std::optional<stream_head>{std::move(*head)};
  }

  /// Stores written before `$all` (or the event-id index) had a column
  /// family of its own keep those keys in the default one: copied over once
  /// at open (a crash part way leaves them in place and the next open copies
  /// again), then dropped from the default family with one range deletion.
  result<void> move_to_family(char prefix, rocksdb::ColumnFamilyHandle* family) {
    const std::string begin(1, prefix), end = keys::prefix_end(prefix);
    bounded_read br{begin, end};
    br.options.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it{db->NewIterator(br.options, default_cf)};
    it->Seek(br.lower_slice);
    if (!it->Valid())
      return it->status().ok() ? result<void>{} : read_error(it->status(), "scan keys to move");
    rocksdb::WriteBatch wb;
    for (; it->Valid(); it->Next()) {
      wb.Put(family, it->key(), it->value());
      if (wb.Count() == 10'000) {
        if (auto st = db->Write(rocksdb::WriteOptions{}, &wb); !st.ok())
          return storage_error{storage_errc::not_writable, "move keys: " + st.ToString()};
        wb.Clear();
      }
    }
    if (!it->status().ok())
      return read_error(it->status(), "scan keys to move");
    // Synced, so the copies before it are durable before the originals go.
    wb.DeleteRange(default_cf, begin, end);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    if (auto st = db->Write(wo, &wb); !st.ok())
      return storage_error{storage_errc::not_writable, "move keys: " + st.ToString()};
    return {};
  }

  /// Position of the last key in `$all` (0 when empty).
  result<uint64_t> last_position() const {
    bounded_read br{std::string(1, keys::all_prefix),
                    keys::prefix_end(keys::all_prefix)};
    std::unique_ptr<rocksdb::Iterator> it{db->NewIterator(br.options, events)};
    it->SeekToLast();
    if (!it->Valid()) {
      if (!it->status().ok())
        return read_error(it->status(), "seek to the last $all key");
      return uint64_t{0};
    }
    auto pos = keys::position_of_all_key(as_view(it->key()));
    if (!pos)
      return corrupted("$all key", as_view(it->key()));
    return *pos;
  }

  /// Events of `$all` at `positions` (ascending, from one snapshot).
  result<std::vector<recorded_event>>
  fetch_positions(const rocksdb::ReadOptions& ro, const std::vector<uint64_t>& positions) const {
    std::vector<std::string> key_bytes;
    key_bytes.reserve(positions.size());
    for (auto pos : positions)
      key_bytes.push_back(keys::all_key(pos));
    std::vector<rocksdb::Slice> key_slices;
    key_slices.reserve(key_bytes.size());
    for (const auto& k : key_bytes)
      key_slices.emplace_back(k);
    std::vector<rocksdb::PinnableSlice> values(key_slices.size());
    std::vector<rocksdb::Status> statuses(key_slices.size());
    db->MultiGet(ro, events, key_slices.size(), key_slices.data(),
                 values.data(), statuses.data(), /*sorted_input=*/true);
    std::vector<recorded_event> events;
    events.reserve(positions.size());
    for (size_t i = 0; i < positions.size(); ++i) {
      if (statuses[i].IsNotFound())
        return storage_error{storage_errc::corrupted,
                             "index points to missing $all position "
                               + std::to_string(positions[i])};
      if (!statuses[i].ok())
        return read_error(statuses[i], "read $all");
      auto ev = keys::decode_event(as_view(values[i]), positions[i]);
      if (!ev)
        return storage_error{storage_errc::corrupted,
                             "event record at position " + std::to_string(positions[i])};
      events.push_back(std::move(*ev));
    }
    return events;
  }
};

event_log::event_log(std::unique_ptr<impl> pimpl) : impl_(std::move(pimpl)) {}

event_log::~event_log() {
  if (!impl_ || !impl_->db)
    return;
  // Unsafe mode: at least a clean shutdown leaves the WAL on disk.
  if (!impl_->sync)
    impl_->db->SyncWAL();
  impl_->release_families();
  impl_->db->Close();
  if (impl_->lock)
    rocksdb::Env::Default()->UnlockFile(impl_->lock);
}

namespace {

/// RocksDB's own diagnostics go to stderr, not to a LOG file in the data
/// directory: on a full disk a failing LOG write would abort the process
/// (Debian's RocksDB keeps its assertions) instead of failing the append.
class stderr_logger : public rocksdb::Logger {
public:
  stderr_logger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel())
      return;
    static constexpr const char* names[] = {"DEBUG", "INFO", "WARN", "ERROR", "FATAL", "HEADER"};
    const char* name = level < rocksdb::InfoLogLevel::NUM_INFO_LOG_LEVELS ? names[level] : "?";
    std::lock_guard<std::mutex> guard{mtx_};
    if (opened_) {
      // A fault that lasts (a full disk) makes RocksDB repeat the same
      // warning many times a second: each kind of line (its format, a
      // literal of one call site) is said at most once a minute, with how
      // many were left out since it was last said.
      auto now = std::chrono::steady_clock::now();
      auto& seen = said_[format];
      if (seen.count > 0 && now - seen.at < std::chrono::minutes{1}) {
        ++seen.left_out;
        return;
      }
      std::fprintf(stderr, "eventsd: rocksdb: [%s] ", name);
      std::vfprintf(stderr, format, ap);
      if (seen.left_out > 0)
        std::fprintf(stderr, " (and %llu more like it since it was last shown)",
                     static_cast<unsigned long long>(seen.left_out));
      std::fputc('\n', stderr);
      seen = {now, seen.count + 1, 0};
      return;
    }
    // Held until the open succeeds (a failure is reported by `open` in one
    // line): what recovery did, e.g. WAL bytes it dropped, is said then.
    if (held_.size() < 100) {
      char line[1024];
      int n = std::snprintf(line, sizeof line, "[%s] ", name);
      std::vsnprintf(line + n, sizeof line - static_cast<size_t>(n), format, ap);
      held_.emplace_back(line);
    }
  }
  /// The open succeeded: says what recovery logged, and logs from now on.
  void opened() {
    std::lock_guard<std::mutex> guard{mtx_};
    opened_ = true;
    for (auto& line : held_)
      std::fprintf(stderr, "eventsd: rocksdb (opening the store): %s\n", line.c_str());
    held_.clear();
  }

private:
  struct said {
    std::chrono::steady_clock::time_point at; ///< when this kind was last shown
    uint64_t count = 0;                       ///< times shown
    uint64_t left_out = 0;                    ///< not shown since
  };
  std::mutex mtx_;
  bool opened_ = false;
  std::vector<std::string> held_;
  std::unordered_map<const char*, said> said_; // one per ROCKS_LOG_* call site
};

/// Leaves recovery from a write error to `append`, which calls Resume() on
/// the next batch: RocksDB's own recovery thread would hold Resume() busy and
/// wait for free space the size of a whole memtable.
class manual_recovery : public rocksdb::EventListener {
public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status,
                            bool* auto_recovery) override {
    if (auto_recovery)
      *auto_recovery = false;
  }
};

} // namespace

result<std::unique_ptr<event_log>> event_log::open(const log_options& opts) try {
  rocksdb::Options options;
  auto logger = std::make_shared<stderr_logger>();
  options.info_log = logger;
  options.listeners.push_back(std::make_shared<manual_recovery>());
  options.create_if_missing = true;
  // Every write goes to the WAL before Write returns, in order; the
  // durability rules in docs/storage.md depend on both.
  options.manual_wal_flush = false;
  options.unordered_write = false;
  // Every acknowledged append was fsynced: only the record a crash cut short
  // may be incomplete. Damage before the end of a WAL (a bad disk) must stop
  // the open — point-in-time recovery would replay up to it, silently drop
  // every acknowledged event after it, and delete the WAL.
  options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  options.write_buffer_size = 64 << 20;
  options.max_write_buffer_number = 3;
  options.keep_log_file_num = 5;
  options.level_compaction_dynamic_level_bytes = true;
  // Most appends look up keys that do not exist yet (a new stream's head, a
  // new idempotency key); a memtable bloom filter answers those without a
  // skip-list search.
  options.memtable_whole_key_filtering = true;
  options.memtable_prefix_bloom_size_ratio = 0.05;
  // Keys of one kind (the first byte) mostly grow at the end ($all and
  // recency keys by position; stream and event-id keys by time-ordered ids):
  // remember where the last insert of each kind went.
  options.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(1));

  rocksdb::BlockBasedTableOptions table;
  const size_t cache_bytes = opts.block_cache_mb << 20;
  table.block_cache = rocksdb::NewLRUCache(cache_bytes);
  // Memtables are charged to the block cache, so RocksDB's memory has one
  // budget, --storage.block-cache-mb, whatever the load: memtables take at
  // most half of it (32 MiB at least) and are flushed early when they would
  // take more; cached blocks have the rest. Without this a write-heavy 10 M
  // store held a full cache plus up to 3 × 64 MiB of memtables.
  options.write_buffer_manager = std::make_shared<rocksdb::WriteBufferManager>(
    std::max<size_t>(cache_bytes / 2, size_t{32} << 20), table.block_cache);
  // Point lookups (stream heads, event ids, idempotency keys) mostly miss on
  // new keys; a bloom filter answers those without touching data blocks.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  // Partitioned index and filters: only small top-level blocks must stay in
  // memory (pinned), the partitions are cached with high priority. With whole
  // filters in the cache, a 10 M-event store thrashed the block cache.
  table.index_type = rocksdb::BlockBasedTableOptions::IndexType::kTwoLevelIndexSearch;
  table.partition_filters = true;
  table.metadata_block_size = 4096;
  table.cache_index_and_filter_blocks = true;
  table.cache_index_and_filter_blocks_with_high_priority = true;
  table.pin_top_level_index_and_filter = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  // A hash index inside each data block: a point read (event records, heads)
  // finds its key without the binary search and linear scan of the block.
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));

  // `$all`'s records in a column family of their own: appended in position
  // order only, its files never overlap older ones, so compaction moves them
  // down without rewriting them. Sharing one key space with the stream
  // indexes and heads (written all over it by appends to old streams), every
  // flushed file overlapped the whole store and compaction rewrote the
  // records again and again (10 M events: up to 25 µs of compaction per
  // append). Reads here never miss, so no bloom filter.
  rocksdb::ColumnFamilyOptions events_options{options};
  auto events_table = table;
  events_table.filter_policy.reset();
  // Every record a restart point of its block: the block's hash index then
  // leads a point read straight to its record. With RocksDB's default (a
  // restart point every 16 keys) a 4 KiB block of ~250-byte records has one,
  // and each read scanned the block from its start (history of a 10-event
  // todo: 21.6 → 19.4 µs at 10 M events, 11.8 → 10.6 µs near-empty; the keys
  // share little, so the files are no larger).
  events_table.block_restart_interval = 1;
  events_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(events_table));
  events_options.memtable_prefix_bloom_size_ratio = 0;
  events_options.memtable_whole_key_filtering = false;
  options.create_missing_column_families = true;
  // The event-id index in a family of its own too: event ids are
  // time-ordered (core::make_uuid), so its keys arrive nearly in order and
  // leveled compaction moves its files down without rewriting them. In the
  // default family they were more than half of its bytes at 10 M events, and
  // universal compaction rewrote them again and again.
  rocksdb::ColumnFamilyOptions event_ids_options{options};
  rocksdb::ColumnFamilyOptions index_options{options};
  index_options.compaction_style = rocksdb::kCompactionStyleUniversal;
  index_options.level_compaction_dynamic_level_bytes = false; // leveled compaction's only
  index_options.prefix_extractor = std::make_shared<stream_index_prefix>();
  const std::vector<rocksdb::ColumnFamilyDescriptor> families{
    {rocksdb::kDefaultColumnFamilyName, index_options},
    {events_family, events_options},
    {event_ids_family, event_ids_options}};

  rocksdb::DB* raw = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  auto st = rocksdb::DB::Open(rocksdb::DBOptions{options}, opts.dir, families, &handles, &raw);
  // A full disk: the open must write (a new MANIFEST at least) and cannot.
  // Opened read-only instead, the server still serves every read and answers
  // writes 503 (/readyz says why) rather than not starting at all.
  bool read_only = false;
  if (!st.ok()
      && (st.IsNoSpace() || st.ToString().find("No space left on device") != std::string::npos)) {
    auto full = st;
    handles.clear();
    st = rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions{options}, opts.dir, families, &handles,
                                      &raw);
    read_only = st.ok();
    if (!st.ok())
      st = full;
  }
  auto pimpl = std::make_unique<impl>(opts.stream_cache_mb << 20);
  pimpl->db.reset(raw);
  pimpl->read_only = read_only;
  if (!st.ok()) {
    auto code = st.IsCorruption() ? storage_errc::corrupted : storage_errc::not_writable;
    auto why = st.ToString();
    // RocksDB says "While lock file: .../LOCK: Resource temporarily unavailable".
    if (st.IsIOError() && why.find("lock file") != std::string::npos)
      why += " (another process, another eventsd say, has this store open)";
    return storage_error{code, "open " + opts.dir + ": " + why};
  }
  if (!pimpl->db || handles.size() != 3)
    return storage_error{storage_errc::not_writable, "open " + opts.dir + ": no database"};
  logger->opened();
  pimpl->default_cf = handles[0];
  pimpl->events = handles[1];
  pimpl->event_ids = handles[2];
  pimpl->sync = opts.sync;
  if (auto id = pimpl->db->GetDbIdentity(pimpl->store_id); !id.ok())
    return storage_error{storage_errc::io_error, "open " + opts.dir + ": " + id.ToString()};
  if (read_only) {
    pimpl->needs_resume.store(true, std::memory_order_release); // never cleared
    // A read-only open takes no lock: hold RocksDB's LOCK file as a
    // read-write open would, so that no second eventsd opens the store
    // meanwhile (its compactions would delete files this one still reads).
    if (auto lk = rocksdb::Env::Default()->LockFile(opts.dir + "/LOCK", &pimpl->lock); !lk.ok())
      return storage_error{storage_errc::not_writable,
                           "open " + opts.dir + ": " + lk.ToString()
                             + " (another process, another eventsd say, has this store open)"};
  }
  // Writes only when a store of an older layout has keys to move (then a
  // read-only store cannot open: it would miss those events).
  if (auto moved = pimpl->move_to_family(keys::all_prefix, pimpl->events); !moved)
    return moved.error();
  if (auto moved = pimpl->move_to_family(keys::event_id_prefix, pimpl->event_ids); !moved)
    return moved.error();
  auto last = pimpl->last_position();
  if (!last)
    return last.error();
  pimpl->head.store(*last, std::memory_order_release);
  return std::unique_ptr<event_log>{new event_log(std::move(pimpl))};
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
} catch (...) {
  return unexpected(storage_errc::not_writable, "unknown");
}

std::vector<result<append_result>>
event_log::append(std::span<const append_request> batch) {
  std::vector<result<append_result>> results;
  try {
    results.reserve(batch.size());
    std::lock_guard<std::mutex> guard{impl_->write_mutex};
    auto& db = *impl_->db;
    // Until the fault of a failed write has cleared every append fails
    // cleanly — but a replay of an idempotency key still gets its first
    // answer: it writes nothing.
    std::optional<storage_error> unwritable;
    if (auto st = impl_->resume_if_needed(); !st.ok())
      unwritable = storage_error{storage_errc::not_writable,
                                 public_reason(st) + "; nothing was appended"};
    rocksdb::ReadOptions ro;
    rocksdb::WriteBatch wb;
    auto& heads = impl_->head_cache;
    if (heads.size() >= impl::head_cache_max)
      heads.clear();
    // Idempotency keys written by earlier requests of this batch.
    std::map<std::string, idempotency_record, std::less<>> pending_keys;
    const uint64_t first_free = impl_->head.load(std::memory_order_relaxed) + 1;
    uint64_t next = first_free;
    // Existing streams this batch appends to (a new one was never cached).
    std::vector<std::string_view> extended;
    // The results that share the fate of this batch's write: its appends,
    // and replays of keys claimed earlier in it. Conflicts with a version or
    // a key it writes were judged on it too: when the write fails they are
    // not known, but their own requests were not appended. The other results
    // were judged on what was there before and stand, so a replay of a key
    // answered earlier gets its first answer even when the batch's write fails.
    std::vector<size_t> on_batch;
    std::vector<size_t> conflicts_on_batch;
    auto written_by_batch = [&](std::string_view stream) {
      return std::any_of(on_batch.begin(), on_batch.end(),
                         [&](size_t i) { return batch[i].stream == stream; });
    };

    for (const auto& req : batch) {
      if (req.events.empty()) {
        results.emplace_back(storage_error{storage_errc::not_writable,
                                           "append to " + req.stream + " has no events"});
        continue;
      }
      auto too_large = std::any_of(req.events.begin(), req.events.end(), [](const auto& e) {
        return field_too_large(e.id) || field_too_large(e.type) || field_too_large(e.data);
      });
      if (too_large || field_too_large(req.stream)) {
        results.emplace_back(storage_error{storage_errc::not_writable,
                                           "append to " + req.stream + ": field over 4 GiB"});
        continue;
      }

      // Idempotency first: a replay must not be judged on the (since advanced)
      // expected version.
      if (req.idempotency) {
        const auto& claim = *req.idempotency;
        std::optional<idempotency_record> live;
        bool claimed_in_batch = false;
        if (auto i = pending_keys.find(claim.key); i != pending_keys.end()) {
          live = i->second;
          claimed_in_batch = true;
        } else {
          auto raw = impl_->get(ro, keys::idempotency_key(claim.key));
          if (!raw) {
            results.emplace_back(raw.error());
            continue;
          }
          if (raw->has_value()) {
            auto rec = keys::decode_idempotency(**raw);
            if (!rec) {
              results.emplace_back(corrupted("idempotency record", claim.key));
              continue;
            }
            if (rec->created_ms + claim.retention_ms > claim.now_ms)
              live = std::move(*rec);
          }
        }
        if (live) {
          if (claimed_in_batch)
            (live->fingerprint != claim.fingerprint ? conflicts_on_batch : on_batch)
              .push_back(results.size());
          if (live->fingerprint != claim.fingerprint) {
            results.emplace_back(storage_error{
              storage_errc::idempotency_conflict,
              "idempotency key " + claim.key + " was used by a different request"});
          } else {
            results.emplace_back(append_result{live->stream, live->version,
                                               live->first_position, live->last_position,
                                               true, live->answered});
          }
          continue;
        }
      }
      if (unwritable) {
        results.emplace_back(*unwritable);
        continue;
      }

      stream_head head;
      if (auto i = heads.find(req.stream); i != heads.end()) {
        head = i->second;
      } else {
        auto stored = impl_->get_head(ro, req.stream);
        if (!stored) {
          results.emplace_back(stored.error());
          continue;
        }
        if (stored->has_value())
          head = std::move(**stored);
      }
      if (req.expected_version != any_version && req.expected_version != head.version) {
        if (written_by_batch(req.stream))
          conflicts_on_batch.push_back(results.size());
        results.emplace_back(storage_error{
          storage_errc::wrong_expected_version,
          "stream " + req.stream + " is at version " + std::to_string(head.version)
            + ", expected " + std::to_string(req.expected_version)});
        continue;
      }

      const uint64_t first_position = next;
      const uint64_t previous_version = head.version, previous_last = head.last_position;
      stream_head after = std::move(head); // its positions move along, not copied
      for (const auto& proposed : req.events) {
        recorded_event ev{proposed.id,   req.stream, proposed.type, after.version + 1,
                          next,          proposed.occurred_at_ms,   proposed.data};
        wb.Put(impl_->events, keys::all_key(next), keys::encode_event(ev));
        // A short stream's positions are all in its head. The event that
        // makes it long moves them to the stream index, where every later
        // version goes too.
        if (after.positions.size() == after.version
            && after.version < keys::head_positions_max) {
          after.positions.push_back(next);
        } else {
          for (size_t i = 0; i < after.positions.size(); ++i)
            wb.Put(keys::stream_index_key(req.stream, i + 1), keys::be64(after.positions[i]));
          after.positions.clear();
          wb.Put(keys::stream_index_key(req.stream, ev.version), keys::be64(next));
        }
        wb.Put(impl_->event_ids, keys::event_id_key(proposed.id), keys::be64(next));
        after.version = ev.version;
        after.last_position = next;
        ++next;
      }
      // Each recency key is put exactly once (positions are unique), so a
      // SingleDelete applies; its tombstone vanishes with the put at the first
      // flush or compaction that sees both, keeping list_streams' scans short.
      if (previous_version > 0)
        wb.SingleDelete(keys::recency_key(previous_last, req.stream));
      wb.Put(keys::recency_key(after.last_position, req.stream), keys::be64(after.version));
      wb.Put(keys::head_key(req.stream), keys::encode_head(after));
      if (req.idempotency) {
        const auto& claim = *req.idempotency;
        idempotency_record rec{claim.fingerprint,    req.stream,       after.version,
                               first_position,       after.last_position, claim.now_ms};
        // Overwrites an expired record with the same key, if any.
        wb.Put(keys::idempotency_key(claim.key), keys::encode_idempotency(rec));
        pending_keys.insert_or_assign(claim.key, std::move(rec));
      }
      on_batch.push_back(results.size());
      results.emplace_back(append_result{req.stream, after.version, first_position,
                                         after.last_position, false});
      if (previous_version > 0)
        extended.push_back(req.stream);
      heads.insert_or_assign(req.stream, std::move(after));
    }

    if (wb.Count() == 0)
      return results;

    rocksdb::WriteOptions wo;
    wo.sync = impl_->sync;
    impl_->keep_memtable_nonempty();
    writing_streams writing{impl_->cache, std::move(extended)};
    auto st = impl_->timed_write([&] { return db.Write(wo, &wb); });
    if (!st.ok()) {
      heads.clear(); // it holds this batch's heads, which did not become durable
      impl_->cache.clear(); // readers may see whatever part of it RocksDB kept
      impl_->note_write_failure(st);
      // Positions stay unconsumed, unless the batch reached the log after all:
      // then never hand them out again.
      auto last = impl_->last_position();
      bool landed = last && *last >= first_free;
      if (landed)
        impl_->head.store(*last, std::memory_order_release);
      // A failed sync comes after the batch was appended to the WAL, which a
      // restart replays when the bytes reached the disk after all: the
      // outcome is unknown, and the caller is told so. A failed append
      // leaves at most a torn record, which recovery drops: nothing.
      // RocksDB's status names the operation: "…: While fdatasync: <file>: …".
      auto text = st.ToString();
      auto op = text.find("While ");
      auto op_end = op == std::string::npos ? op : text.find(':', op);
      bool unknown = landed
                     || (op != std::string::npos
                         && text.substr(op, op_end == std::string::npos ? op_end : op_end - op)
                                .find("sync")
                              != std::string::npos);
      storage_error err{storage_errc::not_writable,
                        public_reason(st)
                          + (unknown ? "; the disk did not confirm it, so it may or may not have "
                                       "been appended: read the stream, or retry with If-Match or "
                                       "the same Idempotency-Key"
                                     : "; nothing was appended")};
      for (auto i : on_batch)
        results[i] = err;
      for (auto i : conflicts_on_batch)
        results[i] = storage_error{storage_errc::not_writable,
                                   public_reason(st) + "; nothing was appended"};
      return results;
    }
    impl_->head.store(next - 1, std::memory_order_release);
    return results;
  } catch (const std::exception& e) {
    results.assign(batch.size(), unexpected(storage_errc::not_writable, e.what()));
  } catch (...) {
    results.assign(batch.size(), unexpected(storage_errc::not_writable, "unknown"));
  }
  // Nothing was written: forget the heads this batch had assumed.
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  impl_->head_cache.clear();
  impl_->cache.clear();
  return results;
}

result<std::vector<recorded_event>>
event_log::read_stream(std::string_view stream, uint64_t from_version, size_t limit,
                       stream_caching caching) const try {
  // No snapshot: heads only grow, index entries and event records are
  // written in the batch that makes a head point at them and never change,
  // so whatever the iterator (created after the head was read) and the
  // record reads see is at least what the head says.
  from_version = std::max<uint64_t>(from_version, 1);
  auto& cache = impl_->cache;
  if (auto all = cache.find(stream))
    return slice(*all, from_version, limit);
  if (caching == stream_caching::fill)
    cache.count_miss();
  const auto ticket = cache.ticket(stream);
  auto stored = impl_->get_head(rocksdb::ReadOptions{}, stream);
  if (!stored)
    return stored.error();
  if (!stored->has_value())
    return storage_error{storage_errc::stream_not_found, "stream " + std::string{stream}};
  const auto& head = **stored;
  if (limit == 0 || from_version > head.version)
    return std::vector<recorded_event>{};
  // Read no further than the head: what was appended since is not asked for.
  const uint64_t count = std::min<uint64_t>(limit, head.version - from_version + 1);
  const uint64_t last = from_version + count - 1;
  std::vector<uint64_t> positions;
  if (!head.positions.empty()) {
    // A short stream: all of its positions are in its head.
    positions.assign(head.positions.begin() + static_cast<ptrdiff_t>(from_version - 1),
                     head.positions.begin() + static_cast<ptrdiff_t>(last));
  } else {
    positions.reserve(count);
    bounded_read br{keys::stream_index_key(stream, from_version),
                    keys::stream_index_key(stream, last + 1)};
    br.options.total_order_seek = false;
    br.options.prefix_same_as_start = true;
    std::unique_ptr<rocksdb::Iterator> it{impl_->db->NewIterator(br.options)};
    for (it->Seek(br.lower_slice); it->Valid(); it->Next()) {
      auto pos = keys::get_be64(as_view(it->value()));
      if (!pos)
        return corrupted("stream index entry", as_view(it->key()));
      positions.push_back(*pos);
    }
    if (!it->status().ok())
      return read_error(it->status(), "read stream index");
    if (positions.size() != count)
      return corrupted("stream index (entries missing)", stream);
  }
  auto events = impl_->fetch_positions(rocksdb::ReadOptions{}, positions);
  if (caching == stream_caching::fill && events.ok() && from_version == 1
      && count == head.version && cache.holds(count))
    cache.insert(stream, ticket, std::make_shared<const std::vector<recorded_event>>(*events));
  return events;
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

std::shared_ptr<const std::vector<recorded_event>>
event_log::cached_stream(std::string_view stream) const {
  return impl_->cache.find(stream);
}

stream_cache_stats event_log::stream_cache_statistics() const {
  return impl_->cache.statistics();
}

result<std::vector<recorded_event>> event_log::read_all(uint64_t from_position,
                                                        size_t limit) const try {
  std::vector<recorded_event> events;
  if (limit == 0)
    return events;
  bounded_read br{keys::all_key(std::max<uint64_t>(from_position, 1)),
                  keys::prefix_end(keys::all_prefix)};
  std::unique_ptr<rocksdb::Iterator> it{impl_->db->NewIterator(br.options, impl_->events)};
  events.reserve(std::min(limit, max_reserve));
  for (it->Seek(br.lower_slice); it->Valid() && events.size() < limit; it->Next()) {
    auto pos = keys::position_of_all_key(as_view(it->key()));
    if (!pos)
      return corrupted("$all key", as_view(it->key()));
    auto ev = keys::decode_event(as_view(it->value()), *pos);
    if (!ev)
      return storage_error{storage_errc::corrupted,
                           "event record at position " + std::to_string(*pos)};
    events.push_back(std::move(*ev));
  }
  if (!it->status().ok())
    return read_error(it->status(), "read $all");
  return events;
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

result<recorded_event> event_log::find_event(std::string_view event_id) const try {
  rocksdb::ManagedSnapshot snap{impl_->db.get()};
  rocksdb::ReadOptions ro;
  ro.snapshot = snap.snapshot();
  auto raw = impl_->get(ro, keys::event_id_key(event_id), impl_->event_ids);
  if (!raw)
    return raw.error();
  if (!raw->has_value())
    return storage_error{storage_errc::event_not_found, "event " + std::string{event_id}};
  auto pos = keys::get_be64(**raw);
  if (!pos)
    return corrupted("event id index entry", event_id);
  auto events = impl_->fetch_positions(ro, {*pos});
  if (!events)
    return events.error();
  return std::move(events->front());
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

result<uint64_t> event_log::stream_version(std::string_view stream) const try {
  auto head = impl_->get_head(rocksdb::ReadOptions{}, stream);
  if (!head)
    return head.error();
  if (!head->has_value())
    return storage_error{storage_errc::stream_not_found, "stream " + std::string{stream}};
  return (*head)->version;
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

result<std::vector<stream_summary>> event_log::list_streams(uint64_t before_position,
                                                            size_t limit) const try {
  std::vector<stream_summary> streams;
  if (limit == 0)
    return streams;
  // Keys with last_position < before_position sort strictly below
  // `r` + be64(before_position), whatever stream name follows.
  auto upper = before_position == 0 ? keys::prefix_end(keys::recency_prefix)
                                    : keys::recency_key(before_position, {});
  bounded_read br{std::string(1, keys::recency_prefix), std::move(upper)};
  std::unique_ptr<rocksdb::Iterator> it{impl_->db->NewIterator(br.options)};
  streams.reserve(std::min(limit, max_reserve));
  for (it->SeekToLast(); it->Valid() && streams.size() < limit; it->Prev()) {
    auto key = as_view(it->key());
    auto version = keys::get_be64(as_view(it->value()));
    if (key.size() < 9 || !version)
      return corrupted("recency index entry", key);
    streams.push_back(
      stream_summary{std::string{key.substr(9)}, *version, *keys::get_be64(key.substr(1, 8))});
  }
  if (!it->status().ok())
    return read_error(it->status(), "read recency index");
  return streams;
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

namespace {

/// Milliseconds since `ns` (steady_clock nanoseconds), 0 for a time ahead.
std::chrono::milliseconds since(int64_t ns) {
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
    std::chrono::nanoseconds{std::max<int64_t>(0, now - ns)});
}

} // namespace

std::chrono::milliseconds event_log::write_waiting() const {
  auto began = impl_->write_began_ns.load(std::memory_order_relaxed);
  return began == 0 ? std::chrono::milliseconds{0} : since(began);
}

bool event_log::writable() const {
  return !impl_->needs_resume.load(std::memory_order_acquire);
}

bool event_log::read_only() const {
  return impl_->read_only;
}

std::optional<std::chrono::milliseconds> event_log::since_write_failure() const {
  auto at = impl_->last_failure_ns.load(std::memory_order_relaxed);
  if (at == 0)
    return std::nullopt;
  return since(at);
}

bool event_log::try_resume() {
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  return impl_->resume_if_needed().ok();
}

std::optional<std::string> event_log::unrecoverable() const {
  if (!impl_->fatal.load(std::memory_order_acquire))
    return std::nullopt;
  return impl_->fatal_reason;
}

uint64_t event_log::head() const {
  return impl_->head.load(std::memory_order_acquire);
}

const std::string& event_log::store_id() const {
  return impl_->store_id;
}

result<void> event_log::save_snapshot(std::string_view stream,
                                      const snapshot_record& snap) try {
  if (field_too_large(snap.state))
    return storage_error{storage_errc::not_writable, "snapshot over 4 GiB"};
  rocksdb::WriteOptions wo;
  wo.sync = false;
  // Under the writers' lock, as every write through the WAL: the memtable
  // kept non-empty here must not be emptied (a flush by Resume() or by an
  // append) before the write.
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  impl_->keep_memtable_nonempty(); // a failure here must leave Resume() a flush too
  // Every snapshot goes under its version; the latest also under `n`, where
  // an activation finds it with one point read. The latest it replaces is
  // under its version already, except in a store written before snapshots
  // were kept by version: put it there too (a rewrite otherwise).
  const auto latest_key = keys::latest_snapshot_key(stream);
  auto latest = impl_->get(rocksdb::ReadOptions{}, latest_key);
  if (!latest)
    return latest.error();
  std::optional<snapshot_record> replaced;
  if (latest->has_value())
    replaced = keys::decode_snapshot(**latest);
  const auto encoded = keys::encode_snapshot(snap);
  rocksdb::WriteBatch wb;
  if (replaced && replaced->version < snap.version)
    wb.Put(keys::snapshot_key(stream, replaced->version), **latest);
  if (!replaced || replaced->version <= snap.version)
    wb.Put(latest_key, encoded);
  wb.Put(keys::snapshot_key(stream, snap.version), encoded);
  auto st = impl_->db->Write(wo, &wb);
  if (!st.ok()) {
    impl_->note_write_failure(st);
    return storage_error{storage_errc::not_writable, "save snapshot: " + public_reason(st)};
  }
  return {};
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
}

result<uint64_t> event_log::mark_idempotency_answer(std::string_view key, uint64_t status) try {
  // Under the writer lock: an append of the same key (a replay) or a purge
  // cannot come between the read and the write.
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  // As for an append: nothing is written to a store not writable (a replay
  // can come then: its append answers it without writing).
  if (auto st = impl_->resume_if_needed(); !st.ok())
    return storage_error{storage_errc::not_writable,
                         "mark idempotency key: store not writable: " + public_reason(st)};
  auto name = keys::idempotency_key(key);
  auto raw = impl_->get(rocksdb::ReadOptions{}, name);
  if (!raw)
    return raw.error();
  if (!raw->has_value())
    return status;
  auto rec = keys::decode_idempotency(**raw);
  if (!rec)
    return corrupted("idempotency record", key);
  if (rec->answered != 0)
    return rec->answered; // the first answer recorded stays
  rec->answered = status;
  if (auto w = impl_->write_one("mark idempotency key", name, keys::encode_idempotency(*rec),
                                false);
      !w)
    return w.error();
  return status;
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
}

result<void> event_log::note_pending_work(std::string_view name, std::string_view value) try {
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  return impl_->write_one("", keys::pending_key(name), value, impl_->sync);
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
}

result<std::optional<std::string>> event_log::pending_work(std::string_view name) const try {
  return impl_->get(rocksdb::ReadOptions{}, keys::pending_key(name));
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

result<void> event_log::finish_pending_work(std::string_view name,
                                            std::optional<std::string_view> only_if) try {
  // Under the writers' lock: a new note cannot come between the read and
  // the delete.
  std::lock_guard<std::mutex> guard{impl_->write_mutex};
  auto key = keys::pending_key(name);
  if (only_if) {
    auto now = impl_->get(rocksdb::ReadOptions{}, key);
    if (!now)
      return now.error();
    if (*now != *only_if)
      return {}; // not noted, or noted again since: kept
  }
  return impl_->write_one("", key, std::nullopt, false);
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
}

result<snapshot_record> event_log::load_snapshot(std::string_view stream,
                                                uint64_t through) const try {
  auto not_found = [&] {
    return storage_error{storage_errc::snapshot_not_found,
                         "no snapshot of " + std::string{stream}
                           + (through == std::numeric_limits<uint64_t>::max()
                                ? std::string{}
                                : " at or before version " + std::to_string(through))};
  };
  // The latest first: one point read, and what an activation asks for.
  auto raw = impl_->get(rocksdb::ReadOptions{}, keys::latest_snapshot_key(stream));
  if (!raw)
    return raw.error();
  if (!raw->has_value())
    return not_found(); // a stream with snapshots has its latest here
  auto latest = keys::decode_snapshot(**raw);
  if (!latest)
    return corrupted("snapshot record", stream);
  if (latest->version <= through)
    return std::move(*latest);
  // An earlier one: the last of the stream's versioned keys below the next
  // version's (`through` < the latest's version: no overflow).
  bounded_read br{keys::snapshot_key(stream, 0), keys::snapshot_key(stream, through + 1)};
  std::unique_ptr<rocksdb::Iterator> it{impl_->db->NewIterator(br.options)};
  it->SeekToLast();
  if (!it->Valid()) {
    if (!it->status().ok())
      return read_error(it->status(), "read the snapshots of " + std::string{stream});
    return not_found();
  }
  auto snap = keys::decode_snapshot(as_view(it->value()));
  if (!snap)
    return corrupted("snapshot record", stream);
  return std::move(*snap);
} catch (const std::exception& e) {
  return unexpected(storage_errc::io_error, e.what());
}

result<size_t> event_log::purge_idempotency_keys(int64_t older_than_ms) try {
  if (impl_->read_only)
    return size_t{0}; // nothing can be deleted; the keys expire at the next purge after a restart
  size_t purged = 0;
  std::string resume_at(1, keys::idempotency_prefix);
  const std::string end = keys::prefix_end(keys::idempotency_prefix);
  for (;;) {
    // One chunk per writer-lock hold: an append can never see a key vanish
    // between its check and its write.
    std::lock_guard<std::mutex> guard{impl_->write_mutex};
    bounded_read br{resume_at, end};
    br.options.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it{impl_->db->NewIterator(br.options)};
    rocksdb::WriteBatch wb;
    size_t scanned = 0;
    it->Seek(br.lower_slice);
    for (; it->Valid() && wb.Count() < purge_chunk && scanned < 4 * purge_chunk;
         it->Next(), ++scanned) {
      auto rec = keys::decode_idempotency(as_view(it->value()));
      // An undecodable record can never be replayed: purge it too.
      if (!rec || rec->created_ms < older_than_ms)
        wb.Delete(it->key());
    }
    if (!it->status().ok())
      return read_error(it->status(), "scan idempotency keys");
    const bool done = !it->Valid();
    if (!done)
      resume_at = it->key().ToString();
    if (wb.Count() > 0) {
      // Losing a purge in a crash only keeps an expired key: no fsync needed.
      impl_->keep_memtable_nonempty();
      auto st = impl_->db->Write(rocksdb::WriteOptions{}, &wb);
      if (!st.ok()) {
        impl_->note_write_failure(st);
        return storage_error{storage_errc::not_writable, "purge: " + public_reason(st)};
      }
      purged += wb.Count();
    }
    if (done)
      return purged;
  }
} catch (const std::exception& e) {
  return unexpected(storage_errc::not_writable, e.what());
}

} // namespace eventsd::storage
