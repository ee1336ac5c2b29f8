// Tests of the event log on a real RocksDB, one fresh temp dir per test.
#include "storage/event_log.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <rocksdb/db.h>

#include "storage/keys.hpp"

namespace fs = std::filesystem;
using namespace eventsd::storage;

constexpr auto fill = stream_caching::fill;

namespace {

/// A fresh, unique directory under the system temp dir, removed afterwards.
class temp_dir {
public:
  temp_dir() {
    static std::atomic<uint64_t> counter{0};
    std::random_device rd;
    path_ = fs::temp_directory_path()
            / ("eventsd-storage-test-" + std::to_string(::getpid()) + "-"
               + std::to_string(counter++) + "-" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const fs::path& path() const { return path_; }
  std::string db() const { return (path_ / "db").string(); }

private:
  fs::path path_;
};

std::unique_ptr<event_log> open_log(const temp_dir& dir, bool sync = true) {
  log_options opts;
  opts.dir = dir.db();
  opts.sync = sync;
  opts.block_cache_mb = 8;
  auto log = event_log::open(opts);
  if (!log)
    FAIL("open failed: " << log.error().detail);
  return std::move(log).value();
}

/// `prefix` followed by `i` (spelt out to dodge GCC 12's -Wrestrict false positive).
std::string numbered(std::string prefix, uint64_t i) {
  prefix += std::to_string(i);
  return prefix;
}

std::string event_id(const std::string& stream, size_t i) {
  return stream + "-event-" + std::to_string(i);
}

/// A request for `n` events of `stream`, ids unique per (stream, first_tag + i).
append_request request(const std::string& stream, uint64_t expected, size_t n,
                       size_t first_tag = 0) {
  append_request req;
  req.stream = stream;
  req.expected_version = expected;
  for (size_t i = 0; i < n; ++i) {
    auto tag = first_tag + i;
    req.events.push_back(proposed_event{event_id(stream, tag), "created",
                                        "{\"n\":" + std::to_string(tag) + "}",
                                        static_cast<int64_t>(1'700'000'000'000 + tag)});
  }
  return req;
}

append_request with_key(append_request req, std::string key, std::string fingerprint,
                        int64_t now_ms, int64_t retention_ms = 1000) {
  req.idempotency = idempotency_claim{std::move(key), std::move(fingerprint), now_ms,
                                      retention_ms};
  return req;
}

append_result append_one(event_log& log, const append_request& req) {
  auto results = log.append(std::span{&req, 1});
  REQUIRE(results.size() == 1);
  if (!results[0])
    FAIL("append failed: " << to_string(results[0].error().code) << ": "
                           << results[0].error().detail);
  return results[0].value();
}

std::vector<uint64_t> positions_of(const std::vector<recorded_event>& events) {
  std::vector<uint64_t> out;
  for (const auto& ev : events)
    out.push_back(ev.position);
  return out;
}

std::vector<uint64_t> range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (auto i = first; i <= last; ++i)
    out.push_back(i);
  return out;
}

/// Opens the store under `dir` with plain RocksDB (no event_log), to look at
/// or rewrite its keys the way an older eventsd would have left them.
class raw_store {
public:
  explicit raw_store(const temp_dir& dir) {
    std::vector<rocksdb::ColumnFamilyDescriptor> families{
      {rocksdb::kDefaultColumnFamilyName, {}}, {"events", {}}, {"event_ids", {}}};
    rocksdb::DB* raw = nullptr;
    REQUIRE(rocksdb::DB::Open(rocksdb::DBOptions{}, dir.db(), families, &handles_, &raw).ok());
    db_.reset(raw);
  }
  ~raw_store() {
    for (auto* h : handles_)
      db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }
  raw_store(const raw_store&) = delete;
  raw_store& operator=(const raw_store&) = delete;

  rocksdb::DB& db() { return *db_; }
  /// The column families in the order eventsd opens them: default, events, event_ids.
  rocksdb::ColumnFamilyHandle* family(size_t i) { return handles_.at(i); }

  /// Keys and values of the default family from `begin` (inclusive) to `end`.
  std::vector<std::pair<std::string, std::string>> scan(const std::string& begin,
                                                        const std::string& end) {
    std::vector<std::pair<std::string, std::string>> out;
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({})};
    for (it->Seek(begin); it->Valid() && it->key().ToString() < end; it->Next())
      out.emplace_back(it->key().ToString(), it->value().ToString());
    REQUIRE(it->status().ok());
    return out;
  }

  keys::stream_head head(const std::string& stream) {
    std::string value;
    REQUIRE(db_->Get({}, keys::head_key(stream), &value).ok());
    auto head = keys::decode_head(value);
    REQUIRE(head);
    return *head;
  }

  /// Versions of `stream` that have a stream index entry.
  std::vector<uint64_t> indexed_versions(const std::string& stream) {
    std::vector<uint64_t> out;
    for (auto& [k, v] : scan(keys::stream_index_key(stream, 0), keys::stream_index_end(stream)))
      out.push_back(*keys::get_be64(std::string_view{k}.substr(k.size() - 8)));
    return out;
  }

private:
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::unique_ptr<rocksdb::DB> db_;
};

/// Every read of `stream` (version `n`, whose version v sits at `positions[v - 1]`)
/// from every version with every limit returns exactly the events asked for.
void check_every_read(const event_log& log, const std::string& stream,
                      const std::vector<uint64_t>& positions) {
  const uint64_t n = positions.size();
  for (uint64_t from = 0; from <= n + 2; ++from)
    for (size_t limit : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{15}, size_t{16},
                         size_t{17}, size_t{40}, size_t{1000}}) {
      auto got = log.read_stream(stream, from, limit);
      REQUIRE(got);
      std::vector<uint64_t> want_versions, want_positions;
      for (auto v = std::max<uint64_t>(from, 1); v <= n && want_versions.size() < limit; ++v) {
        want_versions.push_back(v);
        want_positions.push_back(positions[v - 1]);
      }
      std::vector<uint64_t> versions;
      for (const auto& ev : *got) {
        versions.push_back(ev.version);
        CHECK(ev.stream == stream);
      }
      INFO("from " << from << " limit " << limit);
      CHECK(versions == want_versions);
      CHECK(positions_of(*got) == want_positions);
    }
}

} // namespace

TEST_CASE("appended events are read back from their stream in order with versions and "
          "positions") {
  temp_dir dir;
  auto log = open_log(dir);
  auto res = append_one(*log, request("todo-1", no_stream, 3));
  CHECK(res == append_result{"todo-1", 3, 1, 3, false});
  CHECK(log->head() == 3);

  auto events = log->read_stream("todo-1", 1, 100);
  REQUIRE(events);
  REQUIRE(events->size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const auto& ev = (*events)[i];
    CHECK(ev.id == event_id("todo-1", i));
    CHECK(ev.stream == "todo-1");
    CHECK(ev.type == "created");
    CHECK(ev.version == i + 1);
    CHECK(ev.position == i + 1);
    CHECK(ev.occurred_at_ms == static_cast<int64_t>(1'700'000'000'000 + i));
    CHECK(ev.data == "{\"n\":" + std::to_string(i) + "}");
  }

  SECTION("from a later version and with a limit") {
    auto tail = log->read_stream("todo-1", 2, 1);
    REQUIRE(tail);
    REQUIRE(tail->size() == 1);
    CHECK(tail->front().version == 2);
  }
  SECTION("from version 0 reads from the first event") {
    auto all = log->read_stream("todo-1", 0, 100);
    REQUIRE(all);
    CHECK(all->size() == 3);
  }
}

TEST_CASE("reading a stream past its end is empty and an unknown stream is "
          "stream_not_found") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 2));
  auto past = log->read_stream("todo-1", 3, 10);
  REQUIRE(past);
  CHECK(past->empty());
  auto unknown = log->read_stream("todo-2", 1, 10);
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().code == storage_errc::stream_not_found);
  // From a later version too, and with version 0 read as 1.
  auto unknown_later = log->read_stream("todo-2", 5, 10);
  REQUIRE_FALSE(unknown_later);
  CHECK(unknown_later.error().code == storage_errc::stream_not_found);
  CHECK(log->read_stream("todo-1", 0, 10).value().size() == 2);
  CHECK(log->read_stream("todo-1", 1, 0).value().empty());
  CHECK(log->read_stream("todo-2", 1, 0).error().code == storage_errc::stream_not_found);
}

TEST_CASE("streams whose names share a prefix do not see each other's events") {
  temp_dir dir;
  auto log = open_log(dir);
  const std::string a = "todo";
  const std::string a_nul = std::string("todo\0x", 6);
  const std::string a_one = std::string("todo\x01", 5);
  append_one(*log, request(a, no_stream, 2));
  append_one(*log, request(a_nul, no_stream, 3));
  append_one(*log, request(a_one, no_stream, 1));
  append_one(*log, request("todox", no_stream, 1));
  auto read = [&](const std::string& s) { return log->read_stream(s, 1, 100).value().size(); };
  CHECK(read(a) == 2);
  CHECK(read(a_nul) == 3);
  CHECK(read(a_one) == 1);
  CHECK(read("todox") == 1);
  CHECK(log->read_stream(a_nul, 1, 100).value().front().stream == a_nul);
}

TEST_CASE("a version conflict appends nothing and leaves the other requests of the batch "
          "intact") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 2));

  std::vector<append_request> batch{request("todo-2", no_stream, 1),
                                    request("todo-1", 1, 1, 10), // stale: it is at 2
                                    request("todo-3", no_stream, 2)};
  auto results = log->append(batch);
  REQUIRE(results.size() == 3);
  REQUIRE(results[0]);
  CHECK(*results[0] == append_result{"todo-2", 1, 3, 3, false});
  REQUIRE_FALSE(results[1]);
  CHECK(results[1].error().code == storage_errc::wrong_expected_version);
  REQUIRE(results[2]);
  CHECK(*results[2] == append_result{"todo-3", 2, 4, 5, false});

  CHECK(log->stream_version("todo-1").value() == 2);
  CHECK(log->read_stream("todo-1", 1, 100).value().size() == 2);
  CHECK(log->head() == 5);
  CHECK(positions_of(log->read_all(1, 100).value()) == range(1, 5));
  CHECK_FALSE(log->find_event(event_id("todo-1", 10)));
}

TEST_CASE("no_stream on an existing stream is a version conflict") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 1));
  auto req = request("todo-1", no_stream, 1, 1);
  auto results = log->append(std::span{&req, 1});
  REQUIRE_FALSE(results[0]);
  CHECK(results[0].error().code == storage_errc::wrong_expected_version);
  CHECK(log->head() == 1);
}

TEST_CASE("an expected version on a stream that does not exist is a version conflict") {
  temp_dir dir;
  auto log = open_log(dir);
  auto req = request("todo-1", 3, 1);
  auto results = log->append(std::span{&req, 1});
  REQUIRE_FALSE(results[0]);
  CHECK(results[0].error().code == storage_errc::wrong_expected_version);
  CHECK(log->head() == 0);
}

TEST_CASE("any_version appends whatever the stream's version") {
  temp_dir dir;
  auto log = open_log(dir);
  CHECK(append_one(*log, request("todo-1", any_version, 1)).version == 1);
  CHECK(append_one(*log, request("todo-1", any_version, 2, 1)).version == 3);
}

TEST_CASE("expected versions account for earlier requests of the same batch") {
  temp_dir dir;
  auto log = open_log(dir);
  std::vector<append_request> batch{request("todo-1", no_stream, 2),
                                    request("todo-1", 2, 1, 2),
                                    request("todo-1", 2, 1, 3)}; // stale by now
  auto results = log->append(batch);
  REQUIRE(results[0]);
  REQUIRE(results[1]);
  CHECK(*results[1] == append_result{"todo-1", 3, 3, 3, false});
  REQUIRE_FALSE(results[2]);
  CHECK(results[2].error().code == storage_errc::wrong_expected_version);

  auto events = log->read_stream("todo-1", 1, 100).value();
  REQUIRE(events.size() == 3);
  CHECK(events[2].id == event_id("todo-1", 2));
  auto streams = log->list_streams(0, 10).value();
  REQUIRE(streams.size() == 1); // the in-batch recency entry was replaced
  CHECK(streams[0] == stream_summary{"todo-1", 3, 3});
}

TEST_CASE("$all is read from any position with a limit and is empty past the end") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 3));
  append_one(*log, request("todo-2", no_stream, 2));

  CHECK(positions_of(log->read_all(0, 100).value()) == range(1, 5));
  CHECK(positions_of(log->read_all(1, 100).value()) == range(1, 5));
  CHECK(positions_of(log->read_all(3, 100).value()) == range(3, 5));
  CHECK(positions_of(log->read_all(2, 2).value()) == range(2, 3));
  CHECK(positions_of(log->read_all(5, 100).value()) == range(5, 5));
  CHECK(log->read_all(6, 100).value().empty());
  CHECK(log->read_all(1, 0).value().empty());
  auto fourth = log->read_all(4, 1).value();
  REQUIRE(fourth.size() == 1);
  CHECK(fourth[0].stream == "todo-2");
  CHECK(fourth[0].version == 1);
}

TEST_CASE("$all of an empty log is empty, not an error") {
  temp_dir dir;
  auto log = open_log(dir);
  CHECK(log->head() == 0);
  auto events = log->read_all(1, 10);
  REQUIRE(events);
  CHECK(events->empty());
  auto streams = log->list_streams(0, 10);
  REQUIRE(streams);
  CHECK(streams->empty());
}

TEST_CASE("positions are consecutive and gap-free across batches") {
  temp_dir dir;
  auto log = open_log(dir, /*sync=*/false);
  uint64_t expected_first = 1;
  for (size_t b = 0; b < 20; ++b) {
    std::vector<append_request> batch;
    for (size_t r = 0; r < 5; ++r)
      batch.push_back(request(numbered("todo-", r), any_version, 1 + (b + r) % 3,
                              b * 10));
    auto results = log->append(batch);
    for (size_t r = 0; r < batch.size(); ++r) {
      REQUIRE(results[r]);
      CHECK(results[r]->first_position == expected_first);
      CHECK(results[r]->last_position == expected_first + batch[r].events.size() - 1);
      expected_first = results[r]->last_position + 1;
    }
  }
  CHECK(log->head() == expected_first - 1);
  CHECK(positions_of(log->read_all(1, 10'000).value()) == range(1, expected_first - 1));
}

TEST_CASE("reopening keeps every event and continues positions without reuse") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, request("todo-1", no_stream, 3));
    append_one(*log, request("todo-2", no_stream, 1));
    REQUIRE(log->save_snapshot("todo-1", snapshot_record{3, "state"}));
  }
  auto log = open_log(dir);
  CHECK(log->head() == 4);
  CHECK(log->stream_version("todo-1").value() == 3);
  CHECK(log->read_stream("todo-1", 1, 10).value().size() == 3);
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{3, "state"});

  auto res = append_one(*log, request("todo-1", 3, 1, 3));
  CHECK(res == append_result{"todo-1", 4, 5, 5, false});
  CHECK(positions_of(log->read_all(1, 100).value()) == range(1, 5));
  CHECK(log->find_event(event_id("todo-1", 0)).value().position == 1);
}

TEST_CASE("a store from before the events and event_ids column families is moved over at "
          "open, losing nothing") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, request("todo-1", no_stream, 3));
    append_one(*log, request("todo-2", no_stream, 25'000)); // more than one move chunk
  }
  // Put the store back in the old layout: every `$all` record and every
  // event-id key in the default column family.
  {
    raw_store raw{dir};
    for (size_t family : {1, 2}) {
      rocksdb::WriteBatch wb;
      std::unique_ptr<rocksdb::Iterator> it{raw.db().NewIterator({}, raw.family(family))};
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        wb.Put(raw.family(0), it->key(), it->value());
        wb.Delete(raw.family(family), it->key());
      }
      REQUIRE(wb.Count() == 2 * 25'003);
      it.reset();
      REQUIRE(raw.db().Write({}, &wb).ok());
    }
  }
  auto log = open_log(dir);
  CHECK(log->head() == 25'003);
  CHECK(log->read_stream("todo-1", 1, 10).value().size() == 3);
  CHECK(positions_of(log->read_all(1, 30'000).value()) == range(1, 25'003));
  for (uint64_t p : {uint64_t{1}, uint64_t{2}, uint64_t{4}, uint64_t{25'003}})
    CHECK(log->find_event(log->read_all(p, 1).value().front().id).value().position == p);
  CHECK(append_one(*log, request("todo-1", 3, 1, 3)).last_position == 25'004);
  CHECK(log->find_event(event_id("todo-1", 3)).value().position == 25'004);
  log.reset();
  // Nothing of either kind is left in the default family.
  raw_store raw{dir};
  CHECK(raw.scan(std::string(1, keys::all_prefix), keys::prefix_end(keys::all_prefix)).empty());
  CHECK(raw.scan(std::string(1, keys::event_id_prefix), keys::prefix_end(keys::event_id_prefix))
          .empty());
}

TEST_CASE("a stream of up to 16 events keeps its positions in its head; a longer one keeps "
          "them all in the stream index; every read returns exactly the events asked for") {
  temp_dir dir;
  // Streams filled in differently sized appends, interleaved so that their
  // positions are not consecutive.
  const std::vector<std::pair<std::string, std::vector<size_t>>> plans{
    {"one-by-one", std::vector<size_t>(40, 1)},
    {"one-append", {40}},
    {"across", {15, 3, 1, 21}},
    {"exactly-16", {16}},
    {"just-17", {17}},
    {"short", {5}},
  };
  std::map<std::string, std::vector<uint64_t>> positions;
  {
    auto log = open_log(dir);
    for (size_t round = 0; round < 40; ++round)
      for (const auto& [stream, sizes] : plans) {
        if (round >= sizes.size())
          continue;
        auto& mine = positions[stream];
        auto r = append_one(*log, request(stream, mine.empty() ? no_stream : mine.size(),
                                          sizes[round], mine.size()));
        for (auto p = r.first_position; p <= r.last_position; ++p)
          mine.push_back(p);
      }
    for (const auto& [stream, expected] : positions)
      check_every_read(*log, stream, expected);
  }
  {
    raw_store raw{dir};
    for (const auto& [stream, expected] : positions) {
      INFO(stream);
      auto head = raw.head(stream);
      const bool is_short = expected.size() <= keys::head_positions_max;
      CHECK(head.version == expected.size());
      CHECK(head.positions == (is_short ? expected : std::vector<uint64_t>{}));
      CHECK(raw.indexed_versions(stream) == (is_short ? range(1, 0) : range(1, expected.size())));
    }
    // A missing index entry is reported, not papered over.
    REQUIRE(raw.db().Delete({}, keys::stream_index_key("across", 20)).ok());
  }
  auto log = open_log(dir);
  check_every_read(*log, "one-by-one", positions["one-by-one"]);
  CHECK(log->read_stream("across", 1, 16).value().size() == 16);
  CHECK(log->read_stream("across", 1, 100).error().code == storage_errc::corrupted);
  CHECK(log->read_stream("across", 20, 1).error().code == storage_errc::corrupted);
}

TEST_CASE("a stream written before heads carried positions is read and appended to through "
          "its stream index") {
  temp_dir dir;
  std::map<std::string, std::vector<uint64_t>> positions;
  {
    auto log = open_log(dir);
    for (const auto& [stream, n] : {std::pair{"old-short", 3}, std::pair{"old-long", 20}}) {
      auto r = append_one(*log, request(stream, no_stream, n));
      positions[stream] = range(r.first_position, r.last_position);
    }
  }
  // Rewrite them as an older eventsd stored them: a 16-byte head and an
  // index entry for every version.
  {
    raw_store raw{dir};
    rocksdb::WriteBatch wb;
    for (const auto& [stream, expected] : positions) {
      auto head = raw.head(stream);
      for (size_t i = 0; i < head.positions.size(); ++i)
        wb.Put(keys::stream_index_key(stream, i + 1), keys::be64(head.positions[i]));
      head.positions.clear();
      wb.Put(keys::head_key(stream), keys::encode_head(head));
    }
    REQUIRE(raw.db().Write({}, &wb).ok());
    CHECK(raw.head("old-short").positions.empty());
    CHECK(raw.indexed_versions("old-short") == range(1, 3));
  }
  {
    auto log = open_log(dir);
    for (const auto& [stream, expected] : positions)
      check_every_read(*log, stream, expected);
    for (auto& [stream, expected] : positions) {
      auto r = append_one(*log, request(stream, expected.size(), 2, expected.size()));
      expected.push_back(r.first_position);
      expected.push_back(r.last_position);
      check_every_read(*log, stream, expected);
    }
    CHECK(log->stream_version("old-short").value() == 5);
  }
  raw_store raw{dir};
  CHECK(raw.head("old-short").positions.empty());
  CHECK(raw.indexed_versions("old-short") == range(1, 5));
  CHECK(raw.indexed_versions("old-long") == range(1, 22));
}

TEST_CASE("find_event returns the event by id and an unknown id is event_not_found") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 2));
  append_one(*log, request("todo-2", no_stream, 1));
  auto ev = log->find_event(event_id("todo-1", 1));
  REQUIRE(ev);
  CHECK(ev->stream == "todo-1");
  CHECK(ev->version == 2);
  CHECK(ev->position == 2);
  CHECK(ev.value() == log->read_all(2, 1).value().front());
  auto missing = log->find_event("no-such-id");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == storage_errc::event_not_found);
}

TEST_CASE("stream_version is the number of events and an unknown stream is "
          "stream_not_found") {
  temp_dir dir;
  auto log = open_log(dir);
  auto missing = log->stream_version("todo-1");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == storage_errc::stream_not_found);
  append_one(*log, request("todo-1", no_stream, 2));
  append_one(*log, request("todo-1", 2, 3, 2));
  CHECK(log->stream_version("todo-1").value() == 5);
}

TEST_CASE("list_streams orders streams by their newest event and pages by position") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("a", no_stream, 1));  // a: 1
  append_one(*log, request("b", no_stream, 2));  // b: 2..3
  append_one(*log, request("c", no_stream, 1));  // c: 4
  append_one(*log, request("a", 1, 1, 1));       // a: 5, moves to the front

  auto all = log->list_streams(0, 10).value();
  CHECK(all == std::vector<stream_summary>{{"a", 2, 5}, {"c", 1, 4}, {"b", 2, 3}});

  auto first_page = log->list_streams(0, 2).value();
  CHECK(first_page == std::vector<stream_summary>{{"a", 2, 5}, {"c", 1, 4}});
  auto second_page = log->list_streams(first_page.back().last_position, 2).value();
  CHECK(second_page == std::vector<stream_summary>{{"b", 2, 3}});
  CHECK(log->list_streams(second_page.back().last_position, 2).value().empty());
  CHECK(log->list_streams(0, 0).value().empty());
}

TEST_CASE("an idempotency key with the same fingerprint replays the original result and "
          "appends nothing") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-0", no_stream, 1));
  auto first = append_one(*log, with_key(request("todo-1", no_stream, 2), "k1", "fp", 1000));
  CHECK(first == append_result{"todo-1", 2, 2, 3, false});

  // A retry: the stream has moved on, so its expected version would fail,
  // and it may even name another stream; the key decides.
  auto retry = append_one(*log, with_key(request("todo-9", no_stream, 2, 50), "k1", "fp", 1500));
  CHECK(retry == append_result{"todo-1", 2, 2, 3, true});
  CHECK(log->head() == 3);
  CHECK_FALSE(log->stream_version("todo-9"));
}

TEST_CASE("an idempotency key used twice in one batch replays the first request") {
  temp_dir dir;
  auto log = open_log(dir);
  std::vector<append_request> batch{
    with_key(request("todo-1", no_stream, 1), "k1", "fp", 1000),
    with_key(request("todo-1", no_stream, 1, 1), "k1", "fp", 1000),
    with_key(request("todo-2", no_stream, 1), "k1", "other", 1000)};
  auto results = log->append(batch);
  REQUIRE(results[0]);
  CHECK(*results[0] == append_result{"todo-1", 1, 1, 1, false});
  REQUIRE(results[1]);
  CHECK(*results[1] == append_result{"todo-1", 1, 1, 1, true});
  REQUIRE_FALSE(results[2]);
  CHECK(results[2].error().code == storage_errc::idempotency_conflict);
  CHECK(log->head() == 1);
}

TEST_CASE("an idempotency key reused with a different fingerprint is "
          "idempotency_conflict") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp-a", 1000));
  auto req = with_key(request("todo-1", any_version, 1, 1), "k1", "fp-b", 1001);
  auto results = log->append(std::span{&req, 1});
  REQUIRE_FALSE(results[0]);
  CHECK(results[0].error().code == storage_errc::idempotency_conflict);
  CHECK(log->head() == 1);
}

TEST_CASE("an idempotency key whose retention elapsed is treated as new") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp", 1000, 500));
  // created 1000 + retention 500 == now 1500: expired.
  auto fresh = append_one(*log, with_key(request("todo-1", 1, 1, 1), "k1", "fp2", 1500, 500));
  CHECK(fresh == append_result{"todo-1", 2, 2, 2, false});
  // The key now belongs to the new request.
  auto replay = append_one(*log, with_key(request("todo-1", 2, 1, 2), "k1", "fp2", 1600, 500));
  CHECK(replay == append_result{"todo-1", 2, 2, 2, true});
  CHECK(log->head() == 2);
}

TEST_CASE("idempotency keys survive a reopen") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, with_key(request("todo-1", no_stream, 2), "k1", "fp", 1000));
  }
  auto log = open_log(dir);
  auto replay = append_one(*log, with_key(request("todo-1", no_stream, 2), "k1", "fp", 1100));
  CHECK(replay == append_result{"todo-1", 2, 1, 2, true});
  auto req = with_key(request("todo-1", any_version, 1, 5), "k1", "other", 1100);
  auto conflict = log->append(std::span{&req, 1});
  REQUIRE_FALSE(conflict[0]);
  CHECK(conflict[0].error().code == storage_errc::idempotency_conflict);
}

TEST_CASE("the status of a key's first answer, once marked, comes back with every replay, "
          "also after a reopen; a second mark changes nothing") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp", 1000, 1'000'000));
    append_one(*log, with_key(request("todo-2", no_stream, 1), "k2", "fp", 1000, 1'000'000));
    CHECK(log->mark_idempotency_answer("k1", 202).value() == 202);
    // The first status recorded stays, and a second mark is told it.
    CHECK(log->mark_idempotency_answer("k1", 201).value() == 202);
    CHECK(log->mark_idempotency_answer("never-used", 202).value() == 202); // nothing to mark
    CHECK(append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp", 1100,
                                    1'000'000))
          == append_result{"todo-1", 1, 1, 1, true, 202});
  }
  auto log = open_log(dir);
  CHECK(append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp", 1200, 1'000'000))
          .first_answer
        == 202);
  CHECK(append_one(*log, with_key(request("todo-2", no_stream, 1), "k2", "fp", 1200, 1'000'000))
          .first_answer
        == 0);
  // A different request still conflicts.
  auto req = with_key(request("todo-3", no_stream, 1), "k1", "other", 1200, 1'000'000);
  CHECK(log->append(std::span{&req, 1})[0].error().code == storage_errc::idempotency_conflict);
  CHECK(log->head() == 2);
}

TEST_CASE("purging idempotency keys deletes only those created before the cutoff") {
  temp_dir dir;
  auto log = open_log(dir);
  for (int i = 0; i < 5; ++i)
    append_one(*log, with_key(request(numbered("todo-", i), no_stream, 1),
                              numbered("k", i), "fp", 1000 + i * 100, 1'000'000));
  auto purged = log->purge_idempotency_keys(1200); // k0 (1000) and k1 (1100)
  REQUIRE(purged);
  CHECK(*purged == 2);

  // A purged key is free again; a kept one still replays.
  auto reuse = append_one(*log, with_key(request("todo-0", 1, 1, 1), "k0", "new", 2000,
                                         1'000'000));
  CHECK_FALSE(reuse.replayed);
  auto kept = append_one(*log, with_key(request("todo-2", no_stream, 1), "k2", "fp", 2000,
                                        1'000'000));
  CHECK(kept.replayed);
  CHECK(log->purge_idempotency_keys(0).value() == 0);
  CHECK(log->purge_idempotency_keys(INT64_MAX).value() == 4);
}

TEST_CASE("purging many idempotency keys works across chunks") {
  temp_dir dir;
  auto log = open_log(dir, /*sync=*/false);
  std::vector<append_request> batch;
  for (int i = 0; i < 3000; ++i)
    batch.push_back(with_key(request(numbered("s", i), no_stream, 1),
                             numbered("k", i), "fp", i % 2 == 0 ? 10 : 5000));
  for (const auto& r : log->append(batch))
    REQUIRE(r);
  CHECK(log->purge_idempotency_keys(100).value() == 1500);
  CHECK(log->purge_idempotency_keys(INT64_MAX).value() == 1500);
}

TEST_CASE("snapshots are kept by version: the newest at or before a version is loaded, a "
          "second one at the same version replaces the first; none there is "
          "snapshot_not_found") {
  temp_dir dir;
  auto log = open_log(dir);
  auto missing = log->load_snapshot("todo-1");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == storage_errc::snapshot_not_found);

  const std::string bytes("\0binary\xff", 8);
  REQUIRE(log->save_snapshot("todo-1", snapshot_record{3, bytes}));
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{3, bytes});
  REQUIRE(log->save_snapshot("todo-1", snapshot_record{7, "later"}));
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{7, "later"});
  // A stream whose name extends another's has snapshots of its own.
  REQUIRE(log->save_snapshot("todo-10", snapshot_record{5, "another stream"}));
  REQUIRE(log->save_snapshot("todo-", snapshot_record{9, "a shorter name"}));

  CHECK(log->load_snapshot("todo-1", 7).value() == snapshot_record{7, "later"});
  CHECK(log->load_snapshot("todo-1", 6).value() == snapshot_record{3, bytes});
  CHECK(log->load_snapshot("todo-1", 3).value() == snapshot_record{3, bytes});
  auto before_any = log->load_snapshot("todo-1", 2);
  REQUIRE_FALSE(before_any);
  CHECK(before_any.error().code == storage_errc::snapshot_not_found);
  CHECK(log->load_snapshot("todo-10").value() == snapshot_record{5, "another stream"});
  CHECK(log->load_snapshot("todo-", 100).value() == snapshot_record{9, "a shorter name"});
  CHECK_FALSE(log->load_snapshot("todo-2"));

  REQUIRE(log->save_snapshot("todo-1", snapshot_record{3, "again"}));
  CHECK(log->load_snapshot("todo-1", 5).value() == snapshot_record{3, "again"});
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{7, "later"});
}

TEST_CASE("a store written before snapshots were kept by version has its one snapshot read, "
          "where no newer one is at or before the version asked for") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, request("todo-1", no_stream, 1));
  }
  {
    raw_store raw{dir};
    REQUIRE(raw.db()
              .Put({}, keys::latest_snapshot_key("todo-1"),
                   keys::encode_snapshot(snapshot_record{50, "kept by an older eventsd"}))
              .ok());
  }
  auto log = open_log(dir);
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{50, "kept by an older eventsd"});
  CHECK(log->load_snapshot("todo-1", 50).value()
        == snapshot_record{50, "kept by an older eventsd"});
  CHECK_FALSE(log->load_snapshot("todo-1", 49));
  REQUIRE(log->save_snapshot("todo-1", snapshot_record{100, "by version"}));
  CHECK(log->load_snapshot("todo-1").value() == snapshot_record{100, "by version"});
  CHECK(log->load_snapshot("todo-1", 99).value()
        == snapshot_record{50, "kept by an older eventsd"});
}

TEST_CASE("pending work is noted with a value until it is finished, also across a reopen; a "
          "finish for another value keeps it; names do not see each other") {
  using opt = std::optional<std::string>;
  temp_dir dir;
  {
    auto log = open_log(dir);
    CHECK(log->pending_work("rebuild todos").value() == opt{});
    REQUIRE(log->note_pending_work("rebuild todos", "first"));
    REQUIRE(log->note_pending_work("rebuild todos", "second")); // noted again: replaced
    CHECK(log->pending_work("rebuild todos").value() == opt{"second"});
    CHECK(log->pending_work("rebuild").value() == opt{});
    CHECK(log->pending_work("rebuild todos2").value() == opt{});
    REQUIRE(log->finish_pending_work("never noted"));
    REQUIRE(log->finish_pending_work("rebuild todos", "first")); // an older request's finish
    CHECK(log->pending_work("rebuild todos").value() == opt{"second"});
    append_one(*log, request("todo-1", no_stream, 1));
  }
  auto log = open_log(dir);
  CHECK(log->pending_work("rebuild todos").value() == opt{"second"});
  CHECK(log->head() == 1); // beside the events, not among them
  REQUIRE(log->finish_pending_work("rebuild todos", "second"));
  CHECK(log->pending_work("rebuild todos").value() == opt{});
  REQUIRE(log->note_pending_work("rebuild todos", "third"));
  REQUIRE(log->finish_pending_work("rebuild todos")); // whatever its value
  CHECK(log->pending_work("rebuild todos").value() == opt{});
  log.reset();
  CHECK(open_log(dir)->pending_work("rebuild todos").value() == opt{});
}

TEST_CASE("opening on a path that is a regular file fails with an error") {
  temp_dir dir;
  auto file = dir.path() / "not-a-dir";
  std::ofstream{file} << "x";
  log_options opts;
  opts.dir = file.string();
  auto log = event_log::open(opts);
  REQUIRE_FALSE(log);
  auto code = log.error().code;
  CHECK((code == storage_errc::not_writable || code == storage_errc::io_error));
  CHECK_FALSE(log.error().detail.empty());
}

namespace {

/// The newest WAL file (`NNNNNN.log`) of `db`.
fs::path newest_wal(const fs::path& db) {
  fs::path newest;
  for (const auto& entry : fs::directory_iterator{db})
    if (entry.path().extension() == ".log" && entry.path() > newest)
      newest = entry.path();
  REQUIRE_FALSE(newest.empty());
  return newest;
}

/// Size of the newest WAL file in `db`.
uintmax_t current_wal_size(const fs::path& db) {
  return fs::file_size(newest_wal(db));
}

/// Appends two events to `todo-1` (a new stream), the first of 1 MiB, so that
/// the WAL becomes the store's biggest file; returns the WAL's size. A
/// `file_size_limit` of that size then stops only the WAL: RocksDB's info
/// LOG (this build keeps its asserts) must stay writable.
uintmax_t grow_wal(event_log& log, const temp_dir& dir) {
  auto big = request("todo-1", no_stream, 2);
  big.events[0].data = std::string(1 << 20, 'x');
  append_one(log, big);
  return current_wal_size(dir.db());
}

/// While alive, no file of this process may grow past `bytes`
/// (root ignores permissions but not RLIMIT_FSIZE).
class file_size_limit {
public:
  explicit file_size_limit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = saved_;
    lim.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &lim);
  }
  ~file_size_limit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }
  file_size_limit(const file_size_limit&) = delete;
  file_size_limit& operator=(const file_size_limit&) = delete;

private:
  rlimit saved_{};
  void (*old_handler_)(int) = nullptr;
};

} // namespace

TEST_CASE("a failed write fails every request of the batch it would have appended, keeps a "
          "conflict with a durable head a conflict, and consumes no positions") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    auto wal = grow_wal(*log, dir);
    auto info_log = fs::path{dir.db()} / "LOG"; // eventsd logs RocksDB to stderr instead
    REQUIRE(wal > (fs::exists(info_log) ? fs::file_size(info_log) : 0) + (64 << 10));

    std::vector<append_request> batch{request("todo-2", no_stream, 1),
                                      request("todo-1", 7, 1, 2), // todo-1 is durably at 2
                                      request("todo-3", no_stream, 2)};
    std::vector<result<append_result>> results;
    {
      file_size_limit limit{static_cast<rlim_t>(wal)};
      results = log->append(batch);
    }
    REQUIRE(results.size() == 3);
    for (size_t i : {0, 2}) {
      REQUIRE_FALSE(results[i]);
      CHECK(results[i].error().code == storage_errc::not_writable);
      CHECK_FALSE(results[i].error().detail.empty());
    }
    REQUIRE_FALSE(results[1]);
    CHECK(results[1].error().code == storage_errc::wrong_expected_version);
    CHECK(log->head() == 2);
    CHECK(positions_of(log->read_all(1, 100).value()) == range(1, 2));
    CHECK_FALSE(log->stream_version("todo-2"));
  }
  // After a restart the log continues right after the last durable event.
  auto log = open_log(dir);
  CHECK(log->head() == 2);
  auto res = append_one(*log, request("todo-2", no_stream, 1));
  CHECK(res.first_position == 3);
  CHECK(positions_of(log->read_all(1, 100).value()) == range(1, 3));
}

/// An 8 MiB tmpfs for the full-disk tests: a store on it, and a filler
/// file that takes (almost) all of its space.
struct small_disk {
  temp_dir dir;
  fs::path mnt = dir.path() / "fs";
  bool mounted = false;

  small_disk() {
    fs::create_directories(mnt);
    mounted = ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8m,mode=0755") == 0;
  }
  ~small_disk() {
    if (mounted)
      ::umount2(mnt.c_str(), MNT_DETACH);
  }

  /// False (with a WARN) without root; as root the mount must work.
  bool usable() const {
    if (!mounted && ::geteuid() == 0)
      FAIL("cannot mount a tmpfs as root: " << std::strerror(errno));
    if (!mounted)
      WARN("skipped: cannot mount a tmpfs here (" << std::strerror(errno) << "); needs root");
    return mounted;
  }

  std::unique_ptr<event_log> open() const {
    log_options opts;
    opts.dir = (mnt / "db").string();
    opts.block_cache_mb = 8;
    auto opened = event_log::open(opts);
    REQUIRE(opened);
    return std::move(opened).value();
  }

  void fill() const {
    struct statvfs st{};
    REQUIRE(::statvfs(mnt.c_str(), &st) == 0);
    std::ofstream out{mnt / "filler", std::ios::binary};
    std::string chunk(64 * 1024, '\0');
    for (uint64_t left = st.f_bavail * st.f_frsize; left > 16 * 1024; left -= chunk.size())
      if (!out.write(chunk.data(), static_cast<std::streamsize>(chunk.size())))
        break;
  }

  void free() const { fs::remove(mnt / "filler"); }
};

/// Appends `req` once the store accepts writes again: RocksDB may refuse a
/// few more while it resumes after space came back (as not writable, never
/// otherwise); gives up after 10 s.
result<append_result> append_once_resumed(event_log& log, const append_request& req) {
  auto results = log.append(std::span{&req, 1});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{10};
  while (!results[0] && results[0].error().code == storage_errc::not_writable
         && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds{100});
    results = log.append(std::span{&req, 1});
  }
  return std::move(results[0]);
}

TEST_CASE("write_waiting tells how long the append being written has waited for a disk that "
          "does not complete it, and is zero otherwise") {
  temp_dir dir;
  auto image = (dir.path() / "disk.img").string();
  auto mnt = dir.path() / "ext4";
  fs::create_directories(mnt);
  auto sh = [](const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); };
  // A frozen file system (fsfreeze) holds every write until it is thawed,
  // as a stalled disk would. It needs root and a loop device.
  if (sh("truncate -s 64M " + image) != 0 || sh("mkfs.ext4 -q -F " + image) != 0
      || sh("mount -o loop " + image + " " + mnt.string()) != 0) {
    if (::geteuid() == 0 && fs::exists("/dev/loop-control"))
      FAIL("cannot mount an ext4 image on a loop device, as root, with loop devices there");
    WARN("skipped: cannot mount an ext4 image on a loop device here; needs root and loop devices");
    return;
  }
  struct unmount {
    fs::path p;
    ~unmount() {
      std::system(("fsfreeze -u " + p.string() + " >/dev/null 2>&1").c_str());
      ::umount2(p.c_str(), MNT_DETACH);
    }
  } unmount_at_end{mnt};
  log_options opts;
  opts.dir = (mnt / "db").string();
  opts.block_cache_mb = 8;
  auto opened = event_log::open(opts);
  REQUIRE(opened);
  auto log = std::move(opened).value();
  append_one(*log, request("todo-1", no_stream, 1));
  CHECK(log->write_waiting().count() == 0);

  REQUIRE(sh("fsfreeze -f " + mnt.string()) == 0);
  std::thread writer{[&] { append_one(*log, request("todo-2", no_stream, 1)); }};
  // Once the write is in (however late its thread starts), its wait grows.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds{10};
  bool held = false;
  while (!(held = log->write_waiting().count() > 0) && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  std::this_thread::sleep_for(std::chrono::milliseconds{400});
  auto waited = log->write_waiting();
  sh("fsfreeze -u " + mnt.string());
  writer.join();
  CHECK(held);
  CHECK(waited >= std::chrono::milliseconds{300});
  CHECK(log->write_waiting().count() == 0);
  CHECK(log->head() == 2);
}

/// Appends todo-1's first event, fills the disk, and tries to save a
/// snapshot too big for what is left: the write that fails.
result<void> fail_a_snapshot_on_a_full_disk(const small_disk& disk, event_log& log) {
  append_one(log, request("todo-1", no_stream, 1));
  disk.fill();
  return log.save_snapshot("todo-1", snapshot_record{1, std::string(256 * 1024, 's')});
}

TEST_CASE("a snapshot write that fails on a full disk makes the store not writable until "
          "an append resumes it") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto log = disk.open();
  auto saved = fail_a_snapshot_on_a_full_disk(disk, *log);
  REQUIRE_FALSE(saved);
  CHECK(saved.error().code == storage_errc::not_writable);
  CHECK_FALSE(log->writable()); // /readyz says so, and the next append resumes first

  disk.free();
  auto result = append_once_resumed(*log, request("todo-2", no_stream, 1));
  INFO((result ? std::string{"appended"} : result.error().detail));
  REQUIRE(result);
  CHECK(result->first_position == 2);
  CHECK(log->writable());
}

TEST_CASE("pending work is not noted while the store is not writable (a write failed on a "
          "full disk): not_writable; it is noted once space is back") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto log = disk.open();
  REQUIRE_FALSE(fail_a_snapshot_on_a_full_disk(disk, *log));
  auto noted = log->note_pending_work("rebuild todos", "1");
  REQUIRE_FALSE(noted);
  CHECK(noted.error().code == storage_errc::not_writable);
  CHECK_FALSE(log->writable());
  CHECK_FALSE(log->pending_work("rebuild todos").value());

  disk.free();
  auto again = log->note_pending_work("rebuild todos", "1");
  INFO((again.ok() ? std::string{"noted"} : again.error().detail));
  REQUIRE(again);
  CHECK(log->writable());
  CHECK(log->pending_work("rebuild todos").value() == std::optional<std::string>{"1"});
}

TEST_CASE("a write that fails on a full disk leaves no stream head behind: once space is "
          "back, appends are judged on the durable heads") {
  // The log keeps the heads of streams it wrote recently, so that an append
  // needs no read; the heads of a batch that did not become durable must go.
  small_disk disk;
  if (!disk.usable())
    return;
  auto log = disk.open();
  append_one(*log, request("todo-1", no_stream, 1)); // todo-1 at version 1

  // Fill the disk, then append to todo-1 with an event too big for what is left.
  disk.fill();
  auto too_big = request("todo-1", 1, 1, 2);
  too_big.events[0].data = std::string(256 * 1024, 'x');
  auto failed = log->append(std::span{&too_big, 1});
  REQUIRE(failed.size() == 1);
  REQUIRE_FALSE(failed[0]);
  CHECK(failed[0].error().code == storage_errc::not_writable);

  // Space is back: todo-1 is still at version 1. (RocksDB may refuse a few
  // more writes while it resumes; those fail as not writable, never as
  // version conflicts.)
  disk.free();
  auto result = append_once_resumed(*log, request("todo-1", 1, 1, 3));
  INFO((result ? std::string{"appended"} : result.error().detail));
  REQUIRE(result);
  CHECK(result->version == 2);
  auto next = request("todo-1", 2, 1, 4);
  CHECK(append_one(*log, next).version == 3);
  CHECK(log->stream_version("todo-1").value() == 3);
}

TEST_CASE("when a batch's write fails on a full disk, the answers judged on what was durable "
          "before stand: a replay of a key answered earlier gets its first answer and a "
          "conflict with a durable head stays a conflict; the batch's own appends and what "
          "was judged on them fail") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto log = disk.open();
  auto first = append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "fp", 1000));
  disk.fill();

  auto too_big = request("todo-2", no_stream, 1, 10);
  too_big.events[0].data = std::string(256 * 1024, 'x');
  std::vector<append_request> batch{
    with_key(request("todo-9", no_stream, 1, 20), "k1", "fp", 1500), // replay of the durable k1
    request("todo-1", 5, 1, 30),                                      // todo-1 is at 1, durably
    too_big,                                                          // the write that fails
    with_key(request("todo-3", no_stream, 1, 40), "k2", "fp2", 1500), // claims k2 in this batch
    with_key(request("todo-4", no_stream, 1, 50), "k2", "fp2", 1500), // replays that claim
    with_key(request("todo-5", no_stream, 1, 60), "k2", "other", 1500), // conflicts with it
    request("todo-2", 7, 1, 70), // a conflict with the head this batch writes
  };
  auto results = log->append(batch);
  REQUIRE(results.size() == batch.size());

  REQUIRE(results[0]);
  CHECK(results[0]->replayed);
  CHECK(results[0]->stream == "todo-1");
  CHECK(results[0]->first_position == first.first_position);
  REQUIRE_FALSE(results[1]);
  CHECK(results[1].error().code == storage_errc::wrong_expected_version);
  for (size_t i = 2; i < batch.size(); ++i) {
    INFO("request " << i << ": " << (results[i] ? std::string{"ok"} : results[i].error().detail));
    REQUIRE_FALSE(results[i]);
    CHECK(results[i].error().code == storage_errc::not_writable);
  }
  CHECK(log->head() == first.last_position);
}

TEST_CASE("a failure RocksDB rates fatal (no inode for a new WAL file) is reported as "
          "unrecoverable, and a reopened store has every acknowledged event and is writable") {
  temp_dir dir;
  auto mnt = dir.path() / "fs";
  fs::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256m,nr_inodes=64,mode=0755") != 0) {
    if (::geteuid() == 0)
      FAIL("cannot mount a tmpfs as root: " << std::strerror(errno));
    WARN("skipped: cannot mount a tmpfs here; needs root");
    return;
  }
  struct unmount {
    fs::path p;
    ~unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount_at_end{mnt};
  log_options opts;
  opts.dir = (mnt / "db").string();
  opts.block_cache_mb = 8; // memtables of 32 MiB at most: a switch comes soon
  uint64_t acknowledged = 0;
  {
    auto opened = event_log::open(opts);
    REQUIRE(opened);
    auto log = std::move(opened).value();
    // Every inode left taken: the next new file (a WAL, at the memtable
    // switch) cannot be created.
    std::vector<fs::path> fillers;
    for (int i = 0;; ++i) {
      auto f = mnt / ("inode-" + std::to_string(i));
      if (!std::ofstream{f})
        break;
      fillers.push_back(f);
    }
    REQUIRE_FALSE(fillers.empty());
    std::optional<storage_error> failed;
    for (int i = 1; i <= 200 && !failed; ++i) {
      auto req = request("todo-" + std::to_string(i), no_stream, 1);
      req.events[0].data = std::string(1 << 20, 'x');
      auto r = log->append(std::span{&req, 1});
      if (r[0])
        ++acknowledged;
      else
        failed = r[0].error();
    }
    REQUIRE(failed);
    CHECK(failed->code == storage_errc::not_writable);
    CHECK_FALSE(log->unrecoverable()); // not yet known: the next resume tells
    for (auto& f : fillers)
      fs::remove(f);
    CHECK_FALSE(log->try_resume());
    auto why = log->unrecoverable();
    REQUIRE(why);
    CHECK(why->find("No space left on device") != std::string::npos);
    CHECK_FALSE(log->writable());
    CHECK(log->head() == acknowledged);
  }
  // Reopened (a restart): every acknowledged event, and writes work.
  auto opened = event_log::open(opts);
  REQUIRE(opened);
  auto log = std::move(opened).value();
  CHECK(log->head() == acknowledged);
  CHECK_FALSE(log->unrecoverable());
  auto next = append_one(*log, request("todo-after", no_stream, 1));
  CHECK(next.first_position == acknowledged + 1);
}

TEST_CASE("while the store is not writable a replay of an idempotency key still gets its "
          "first answer (and a reuse its conflict); everything else is refused unwritten") {
  small_disk disk;
  if (!disk.usable())
    return;
  auto log = disk.open();
  const int64_t now = 1'700'000'000'000;
  auto first = append_one(*log, with_key(request("todo-1", no_stream, 1), "k1", "f1", now, 60'000));

  disk.fill();
  auto too_big = request("todo-2", no_stream, 1, 2);
  too_big.events[0].data = std::string(256 * 1024, 'x');
  auto failed = log->append(std::span{&too_big, 1});
  REQUIRE_FALSE(failed[0]);
  REQUIRE(failed[0].error().code == storage_errc::not_writable);
  REQUIRE_FALSE(log->writable());

  // One batch: the replay (its stream meanwhile at any version), a reuse of
  // the key for another request, a new key and a plain append.
  std::vector<append_request> batch{
    with_key(request("todo-9", no_stream, 1, 5), "k1", "f1", now + 1, 60'000),
    with_key(request("todo-8", no_stream, 1, 6), "k1", "other", now + 1, 60'000),
    with_key(request("todo-7", no_stream, 1, 7), "k2", "f2", now + 1, 60'000),
    request("todo-1", 1, 1, 8)};
  auto results = log->append(batch);
  REQUIRE(results.size() == 4);
  REQUIRE(results[0]);
  CHECK(results[0]->replayed);
  CHECK(results[0]->stream == "todo-1");
  CHECK(results[0]->first_position == first.first_position);
  REQUIRE_FALSE(results[1]);
  CHECK(results[1].error().code == storage_errc::idempotency_conflict);
  for (size_t i : {2, 3}) {
    REQUIRE_FALSE(results[i]);
    CHECK(results[i].error().code == storage_errc::not_writable);
  }
  CHECK(log->head() == 1);
  // Nor is a first answer recorded for the key meanwhile.
  auto marked = log->mark_idempotency_answer("k1", 202);
  REQUIRE_FALSE(marked);
  CHECK(marked.error().code == storage_errc::not_writable);

  // Space is back: the new key was not taken, and the log goes on at 2.
  disk.free();
  auto fresh = append_once_resumed(*log, batch[2]);
  REQUIRE(fresh);
  CHECK_FALSE(fresh->replayed);
  CHECK(fresh->first_position == 2);
  REQUIRE(log->mark_idempotency_answer("k1", 202));
  auto replay = log->append(std::span{&batch[0], 1});
  REQUIRE(replay[0]);
  CHECK(replay[0]->first_answer == 202);
}

TEST_CASE("readers see a gap-free prefix of $all while a writer appends") {
  temp_dir dir;
  auto log = open_log(dir, /*sync=*/false);
  constexpr uint64_t total = 2000;
  std::atomic<bool> done{false};
  std::atomic<uint64_t> reads{0};
  std::thread writer{[&] {
    for (uint64_t i = 0; i < total / 4; ++i) {
      if (i == total / 8) {
        // Halfway, the reader reads at least once whole: the check below
        // sees a log mid-write, however fast the writer is.
        for (auto seen = reads.load(); reads.load() < seen + 2;)
          std::this_thread::yield();
      }
      std::vector<append_request> batch{request(numbered("x-", i % 7), any_version, 2, i * 2),
                                        request(numbered("y-", i % 5), any_version, 2, i * 2)};
      log->append(batch);
    }
    done = true;
  }};
  bool ordered = true;
  uint64_t reads_mid_write = 0;
  while (!done) {
    auto head = log->head();
    auto events = log->read_all(1, 100'000).value();
    // Everything up to the head is visible, and nothing has a gap.
    ordered = ordered && events.size() >= head;
    for (size_t i = 0; i < events.size(); ++i)
      ordered = ordered && events[i].position == i + 1;
    if (head > 0 && events.size() < total)
      ++reads_mid_write;
    ++reads;
  }
  writer.join();
  CHECK(reads_mid_write > 0);
  CHECK(ordered);
  CHECK(log->head() == total);
  CHECK(log->read_all(1, 100'000).value().size() == total);
}

TEST_CASE("a short stream read whole with `fill` is cached; an append drops it and the next "
          "read is current") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-1", no_stream, 3));
  CHECK(log->cached_stream("todo-1") == nullptr);
  CHECK(log->read_stream("todo-1", 2, 10, fill).value().size() == 2); // a part: not kept
  CHECK(log->read_stream("todo-1", 1, 1000).value().size() == 3); // `use`: not kept
  CHECK(log->cached_stream("todo-1") == nullptr);
  auto whole = log->read_stream("todo-1", 1, 1000, fill).value();
  auto cached = log->cached_stream("todo-1");
  REQUIRE(cached != nullptr);
  CHECK(*cached == whole);
  // Later reads, whole or in parts, are answered from it, the same.
  CHECK(log->read_stream("todo-1", 2, 1).value() == std::vector{whole[1]});
  CHECK(log->read_stream("todo-1", 4, 10).value().empty());
  CHECK(log->read_stream("todo-1", 0, 0).value().empty());
  auto stats = log->stream_cache_statistics();
  CHECK(stats.hits == 4); // cached_stream once, read_stream three times
  CHECK(stats.misses == 2); // `use` reads are not counted
  CHECK(stats.streams == 1);

  append_one(*log, request("todo-1", 3, 1, 3));
  CHECK(log->cached_stream("todo-1") == nullptr);
  auto after = log->read_stream("todo-1", 1, 1000, fill).value();
  CHECK(positions_of(after) == range(1, 4));
  REQUIRE(log->cached_stream("todo-1") != nullptr);
  CHECK(log->cached_stream("todo-1")->size() == 4);
  // An idempotent replay appends nothing and leaves the entry alone.
  auto keyed = with_key(request("todo-2", no_stream, 1), "k", "f", 1);
  append_one(*log, keyed);
  log->read_stream("todo-2", 1, 1000, fill).value();
  append_one(*log, keyed);
  CHECK(log->cached_stream("todo-2") != nullptr);
}

TEST_CASE("streams over 64 events, unknown streams and a zero budget are not cached") {
  temp_dir dir;
  {
    auto log = open_log(dir);
    append_one(*log, request("long", no_stream, 65));
    append_one(*log, request("short", no_stream, 64));
    CHECK(log->read_stream("long", 1, 1000, fill).value().size() == 65);
    CHECK(log->cached_stream("long") == nullptr);
    CHECK(log->read_stream("short", 1, 1000, fill).value().size() == 64);
    CHECK(log->cached_stream("short") != nullptr);
    CHECK(log->read_stream("none", 1, 1000, fill).error().code == storage_errc::stream_not_found);
    CHECK(log->cached_stream("none") == nullptr);
  }
  log_options opts;
  opts.dir = dir.db();
  opts.block_cache_mb = 8;
  opts.stream_cache_mb = 0;
  auto log = event_log::open(opts).value();
  CHECK(log->read_stream("short", 1, 1000, fill).value().size() == 64);
  CHECK(log->cached_stream("short") == nullptr);
}

TEST_CASE("a failed write empties the stream cache, and so does the recovery after it") {
  temp_dir dir;
  auto log = open_log(dir);
  append_one(*log, request("todo-2", no_stream, 1));
  log->read_stream("todo-2", 1, 1000, fill).value();
  REQUIRE(log->cached_stream("todo-2") != nullptr);
  auto wal = grow_wal(*log, dir);
  {
    file_size_limit limit{static_cast<rlim_t>(wal)};
    auto req = request("todo-1", 2, 1, 2);
    REQUIRE_FALSE(log->append(std::span{&req, 1})[0]);
  }
  CHECK(log->cached_stream("todo-2") == nullptr);
  // Read again while the store is not writable: kept, until the recovery
  // (which may make part of the failed batch visible) drops it.
  CHECK(log->read_stream("todo-2", 1, 1000, fill).value().size() == 1);
  REQUIRE(log->cached_stream("todo-2") != nullptr);
  REQUIRE_FALSE(log->writable());
  // Whether RocksDB recovers (here its WAL writer keeps the error; a reopen
  // would), what was cached is dropped once it tried.
  log->try_resume();
  CHECK(log->cached_stream("todo-2") == nullptr);
}

TEST_CASE("while a writer appends every read of a stream is a prefix of it and a read after "
          "an acknowledged append includes it") {
  temp_dir dir;
  auto log = open_log(dir, /*sync=*/false);
  constexpr uint64_t streams = 4, per_stream = 60;
  for (uint64_t s = 0; s < streams; ++s)
    append_one(*log, request(numbered("s-", s), no_stream, 1, 0));
  std::atomic<uint64_t> acknowledged[streams];
  for (auto& a : acknowledged)
    a = 1;
  std::atomic<bool> done{false};
  std::thread writer{[&] {
    for (uint64_t v = 1; v < per_stream; ++v) {
      for (uint64_t s = 0; s < streams; ++s) {
        append_one(*log, request(numbered("s-", s), v, 1, v));
        acknowledged[s] = v + 1;
      }
      // Lets the readers be answered from the cache between rounds (up to
      // 10 ms), also on a loaded machine: the checks then cover cached reads.
      auto hits = log->stream_cache_statistics().hits;
      for (int i = 0; i < 100 && log->stream_cache_statistics().hits == hits; ++i)
        std::this_thread::sleep_for(std::chrono::microseconds{100});
    }
    done = true;
  }};
  std::atomic<bool> prefix{true}, current{true}; // two readers write them
  auto reader = [&] {
    while (!done)
      for (uint64_t s = 0; s < streams; ++s) {
        auto name = numbered("s-", s);
        const uint64_t known = acknowledged[s];
        auto events = log->read_stream(name, 1, 1000, fill).value();
        if (events.size() < known)
          current = false;
        for (size_t i = 0; i < events.size(); ++i)
          if (events[i].version != i + 1 || events[i].id != event_id(name, i))
            prefix = false;
        if (auto cached = log->cached_stream(name); cached && cached->size() < known)
          current = false;
      }
  };
  std::thread other{reader};
  reader();
  writer.join();
  other.join();
  CHECK(prefix);
  CHECK(current);
  for (uint64_t s = 0; s < streams; ++s)
    CHECK(log->read_stream(numbered("s-", s), 1, 1000).value().size() == per_stream);
  CHECK(log->stream_cache_statistics().hits > 0);
}

TEST_CASE("the record codec round-trips and rejects truncated records") {
  recorded_event ev{"id", std::string("s\0t", 3), "type", 7, 42, -5, "{\"a\":1}"};
  auto bytes = keys::encode_event(ev);
  CHECK(keys::decode_event(bytes, 42) == ev);
  CHECK_FALSE(keys::decode_event(bytes.substr(0, bytes.size() - 1), 42));
  CHECK_FALSE(keys::decode_event(bytes + "x", 42));
  CHECK_FALSE(keys::decode_event("", 42));

  keys::idempotency_record rec{"fp", "todo-1", 3, 10, 12, -1};
  auto raw = keys::encode_idempotency(rec);
  CHECK(keys::decode_idempotency(raw) == rec);
  CHECK_FALSE(keys::decode_idempotency(raw.substr(0, 5)));
  auto marked = rec;
  marked.answered = 202;
  auto marked_raw = keys::encode_idempotency(marked);
  CHECK(marked_raw.size() == raw.size() + 8); // records of unmarked keys keep their size
  CHECK(keys::decode_idempotency(marked_raw) == marked);
  CHECK_FALSE(keys::decode_idempotency(marked_raw.substr(0, marked_raw.size() - 1)));

  CHECK(keys::decode_snapshot(keys::encode_snapshot({9, "state"}))
        == snapshot_record{9, "state"});
  CHECK(keys::decode_head(keys::encode_head({4, 9, {}})) == keys::stream_head{4, 9, {}});
  CHECK(keys::encode_head({4, 9, {}}).size() == 16);
  keys::stream_head carrying{3, 30, {10, 20, 30}};
  CHECK(keys::decode_head(keys::encode_head(carrying)) == carrying);
  CHECK_FALSE(keys::decode_head("short"));
  CHECK_FALSE(keys::decode_head(keys::encode_head(carrying) + "x"));
  // A head carries all of its stream's positions or none.
  CHECK_FALSE(keys::decode_head(keys::encode_head({2, 30, {10, 20, 30}})));
  CHECK_FALSE(keys::decode_head(keys::encode_head({3, 30, {10, 20}})));
}

TEST_CASE("$all and recency keys sort by position") {
  CHECK(keys::all_key(255) < keys::all_key(256));
  CHECK(keys::all_key(1) < keys::prefix_end(keys::all_prefix));
  CHECK(keys::recency_key(255, "zzz") < keys::recency_key(256, "a"));
  CHECK(keys::stream_index_key("s", 1) < keys::stream_index_end("s"));
  CHECK(keys::stream_index_key("s", UINT64_MAX) < keys::stream_index_end("s"));
  CHECK_FALSE(keys::stream_index_key(std::string("s\0", 2), 1) < keys::stream_index_end("s"));
}

namespace {

/// The store as a crash would leave it after 200 one-event appends, each its
/// own synced WAL record: a copy of the files taken while it is open (a clean
/// close flushes the memtables, and the events would no longer be in the WAL).
fs::path crashed_store_of_two_hundred(const temp_dir& dir) {
  auto log = open_log(dir);
  for (int i = 0; i < 200; ++i)
    append_one(*log, request("todo-" + std::to_string(i), no_stream, 1));
  fs::path image = dir.path() / "crashed";
  fs::copy(dir.db(), image, fs::copy_options::recursive);
  fs::remove(image / "LOCK");
  return image;
}

} // namespace

TEST_CASE("a WAL damaged in the middle refuses to open with a corruption error and is left as "
          "it was: acknowledged events after the damage are never dropped silently") {
  temp_dir dir;
  auto image = crashed_store_of_two_hundred(dir);
  auto wal = newest_wal(image);
  auto size = fs::file_size(wal);
  {
    std::fstream f{wal, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(static_cast<std::streamoff>(size / 2));
    std::string garbage(16, '\x55');
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  log_options opts;
  opts.dir = image.string();
  auto log = event_log::open(opts);
  REQUIRE_FALSE(log);
  CHECK(log.error().code == storage_errc::corrupted);
  INFO(log.error().detail);
  CHECK(log.error().detail.find("orrupt") != std::string::npos);
  CHECK(fs::exists(wal));
  CHECK(fs::file_size(wal) == size);
}

TEST_CASE("a WAL whose last record was cut short by a crash opens, without that record") {
  temp_dir dir;
  auto image = crashed_store_of_two_hundred(dir);
  auto wal = newest_wal(image);
  fs::resize_file(wal, fs::file_size(wal) - 5); // a write torn inside its last record
  log_options opts;
  opts.dir = image.string();
  auto log = std::move(event_log::open(opts).value());
  CHECK(log->head() == 199);
  CHECK(positions_of(log->read_all(1, 1000).value()) == range(1, 199));
}
