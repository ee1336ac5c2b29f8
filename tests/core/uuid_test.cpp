// Tests of core/uuid.hpp: new ids are version-7 UUIDs in canonical form that
// sort in the order they were made (also across threads, per thread), and
// normalize_uuid accepts exactly the 8-4-4-4-12 hex form.
#include "core/uuid.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

using eventsd::core::make_uuid;
using eventsd::core::normalize_uuid;

TEST_CASE("make_uuid: canonical lowercase version-7 UUIDs with the RFC 9562 variant", "[uuid]") {
  for (int i = 0; i < 1000; ++i) {
    auto id = make_uuid();
    INFO(id);
    REQUIRE(id.size() == 36);
    CHECK(normalize_uuid(id) == id);
    CHECK(id[14] == '7');
    CHECK(std::string{"89ab"}.find(id[19]) != std::string::npos);
  }
}

TEST_CASE("make_uuid: ids made one after another sort in that order, even a hundred within "
          "one millisecond, and never repeat",
          "[uuid]") {
  // Made until a hundred share one millisecond (the first 48 bits:
  // "xxxxxxxx-xxxx"), however slowly this machine makes them.
  std::vector<std::string> ids;
  size_t same_ms = 0, most_in_one_ms = 0;
  while (ids.size() < 20'000 || (most_in_one_ms < 100 && ids.size() < 1'000'000)) {
    ids.push_back(make_uuid());
    bool same = ids.size() > 1 && ids.back().compare(0, 13, ids[ids.size() - 2], 0, 13) == 0;
    same_ms = same ? same_ms + 1 : 1;
    most_in_one_ms = std::max(most_in_one_ms, same_ms);
  }
  INFO(ids.size() << " ids, at most " << most_in_one_ms << " in one millisecond");
  CHECK(most_in_one_ms >= 100);
  CHECK(std::is_sorted(ids.begin(), ids.end()));
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
}

TEST_CASE("make_uuid: from several threads at once, each thread's ids are in order and all "
          "are distinct",
          "[uuid]") {
  constexpr int threads = 4, per_thread = 5'000;
  std::vector<std::vector<std::string>> made(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&made, t] {
      for (int i = 0; i < per_thread; ++i)
        made[t].push_back(make_uuid());
    });
  for (auto& w : workers)
    w.join();
  std::set<std::string> all;
  for (auto& ids : made) {
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    all.insert(ids.begin(), ids.end());
  }
  CHECK(all.size() == threads * per_thread);
}

TEST_CASE("normalize_uuid: any letter case in, lowercase out; anything else refused", "[uuid]") {
  CHECK(normalize_uuid("0B7C1E5E-3F0A-4D8E-9A4C-1F2E3D4C5B6A")
        == "0b7c1e5e-3f0a-4d8e-9a4c-1f2e3d4c5b6a");
  for (const char* bad : {"", "0b7c1e5e3f0a4d8e9a4c1f2e3d4c5b6a", "0b7c1e5e-3f0a-4d8e-9a4c-1f2e3d4c5b6",
                          "0b7c1e5e-3f0a-4d8e-9a4c-1f2e3d4c5b6g", "0b7c1e5e_3f0a-4d8e-9a4c-1f2e3d4c5b6a",
                          "{0b7c1e5e-3f0a-4d8e-9a4c-1f2e3d4c5b}"})
    CHECK_FALSE(normalize_uuid(bad));
}
