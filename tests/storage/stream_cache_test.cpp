// Tests of the stream cache on its own (the event log's use of it is tested
// in event_log_test.cpp).
#include "storage/stream_cache.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace eventsd::storage;

namespace {

stream_cache::events stream_of(const std::string& stream, size_t n, size_t data_bytes = 10) {
  auto all = std::make_shared<std::vector<recorded_event>>();
  for (size_t i = 1; i <= n; ++i) {
    auto id = stream; // appended to, not `+`: dodges GCC 12's -Wrestrict false positive
    id += '-';
    id += std::to_string(i);
    all->push_back(recorded_event{id, stream, "created", i, i, 0, std::string(data_bytes, 'x')});
  }
  return all;
}

} // namespace

TEST_CASE("a stream inserted with a current ticket is found, the same events",
          "[stream_cache]") {
  stream_cache cache{1 << 20, 64};
  CHECK(cache.find("a") == nullptr);
  auto t = cache.ticket("a");
  auto all = stream_of("a", 3);
  cache.insert("a", t, all);
  auto hit = cache.find("a");
  REQUIRE(hit != nullptr);
  CHECK(*hit == *all);
  auto st = cache.statistics();
  CHECK(st.hits == 1);
  CHECK(st.streams == 1);
  CHECK(st.bytes > 3 * 10);
}

TEST_CASE("a read that raced with an append is not kept", "[stream_cache]") {
  stream_cache cache{1 << 20, 64};
  auto t = cache.ticket("a");
  cache.begin_write("a"); // an append was written while the read ran
  cache.end_write("a");
  cache.insert("a", t, stream_of("a", 3));
  CHECK(cache.find("a") == nullptr);
  // A read that began after it is kept.
  cache.insert("a", cache.ticket("a"), stream_of("a", 4));
  REQUIRE(cache.find("a") != nullptr);
  CHECK(cache.find("a")->size() == 4);
}

TEST_CASE("while an append to a stream is written it is neither served nor kept; its end "
          "drops the stream's entry and no other stream's",
          "[stream_cache]") {
  stream_cache cache{1 << 20, 64};
  for (auto s : {"a", "b"})
    cache.insert(s, cache.ticket(s), stream_of(s, 2));
  cache.begin_write("a");
  cache.begin_write("a"); // the same stream twice in one batch
  CHECK(cache.find("a") == nullptr);
  CHECK(cache.find("b") != nullptr);
  // A read made while the append is written (it may or may not show it).
  cache.insert("a", cache.ticket("a"), stream_of("a", 3));
  CHECK(cache.find("a") == nullptr);
  cache.end_write("a");
  CHECK(cache.find("a") == nullptr); // one of the two appends is still being written
  cache.insert("a", cache.ticket("a"), stream_of("a", 3));
  CHECK(cache.find("a") == nullptr);
  cache.end_write("a");
  CHECK(cache.find("a") == nullptr);
  cache.insert("a", cache.ticket("a"), stream_of("a", 4)); // read after both: kept
  REQUIRE(cache.find("a") != nullptr);
  CHECK(cache.find("a")->size() == 4);
  cache.begin_write("a");
  cache.end_write("a");
  CHECK(cache.find("a") == nullptr);
  CHECK(cache.find("b") != nullptr);
  auto t = cache.ticket("c");
  cache.clear();
  CHECK(cache.find("b") == nullptr);
  cache.insert("c", t, stream_of("c", 1)); // read before the clear: not kept
  CHECK(cache.find("c") == nullptr);
  CHECK(cache.statistics().streams == 0);
  CHECK(cache.statistics().bytes == 0);
}

TEST_CASE("streams longer than the limit, or larger than a shard's budget, are not kept",
          "[stream_cache]") {
  stream_cache cache{32 * 4096, 8};
  CHECK(cache.holds(8));
  CHECK_FALSE(cache.holds(9));
  cache.insert("long", cache.ticket("long"), stream_of("long", 9));
  CHECK(cache.find("long") == nullptr);
  cache.insert("big", cache.ticket("big"), stream_of("big", 1, 8192)); // a shard has 4 KiB
  CHECK(cache.find("big") == nullptr);
  stream_cache none{0, 64};
  CHECK_FALSE(none.holds(1));
  none.insert("a", none.ticket("a"), stream_of("a", 1));
  CHECK(none.find("a") == nullptr);
}

TEST_CASE("the least recently used streams go first when the budget is exceeded",
          "[stream_cache]") {
  // One stream of ~1.3 KiB each; 32 shards of 8 KiB: each holds about six.
  stream_cache cache{32 * 8192, 64};
  std::vector<std::string> names;
  for (int i = 0; i < 2000; ++i) {
    names.emplace_back("s");
    names.back() += std::to_string(i);
    cache.insert(names.back(), cache.ticket(names.back()), stream_of(names.back(), 1, 1000));
    // s0 is read after every insert: always the most recently used of its shard.
    CHECK(cache.find("s0") != nullptr);
  }
  auto st = cache.statistics();
  CHECK(st.bytes <= 32 * 8192);
  CHECK(st.streams < 2000);
  CHECK(st.streams > 32 * 4);
  CHECK(cache.find("s1999") != nullptr); // the newest
  size_t kept = 0;
  for (int i = 1; i < 100; ++i)
    kept += cache.find(names[static_cast<size_t>(i)]) != nullptr;
  CHECK(kept == 0); // the oldest (after s0) were evicted
}

TEST_CASE("inserting a stream again replaces its entry", "[stream_cache]") {
  stream_cache cache{1 << 20, 64};
  cache.insert("a", cache.ticket("a"), stream_of("a", 2));
  auto bytes = cache.statistics().bytes;
  cache.insert("a", cache.ticket("a"), stream_of("a", 5));
  CHECK(cache.find("a")->size() == 5);
  CHECK(cache.statistics().streams == 1);
  CHECK(cache.statistics().bytes > bytes);
}
