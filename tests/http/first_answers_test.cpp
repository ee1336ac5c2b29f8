// first_answers (http/services.hpp), without a server: how the first request
// for an event and its idempotent replays come to answer the same status.
#include "http/services.hpp"

#include <vector>

#include <catch2/catch.hpp>

using eventsd::http::first_answers;

TEST_CASE("the first status settled for an event is every later settle's answer",
          "[http][first_answers]") {
  first_answers answers;
  auto first = answers.settle(7, 202);
  CHECK(first.status == 202);
  CHECK(first.first);
  // A replay that saw the read model catch up decides 201, but answers 202.
  auto second = answers.settle(7, 201);
  CHECK(second.status == 202);
  CHECK_FALSE(second.first);
  // Another event is settled on its own.
  auto other = answers.settle(8, 201);
  CHECK(other.status == 201);
  CHECK(other.first);
}

TEST_CASE("followers get the settled status once, later follows get it at once, and an "
          "unfollowed one gets nothing",
          "[http][first_answers]") {
  first_answers answers;
  std::vector<unsigned> got, dropped;
  auto f = answers.follow(3, [&](unsigned s) { got.push_back(s); });
  CHECK_FALSE(f.status);
  auto g = answers.follow(3, [&](unsigned s) { dropped.push_back(s); });
  answers.unfollow(3, g.id);
  answers.settle(3, 201);
  answers.settle(3, 202);
  CHECK(got == std::vector<unsigned>{201});
  CHECK(dropped.empty());
  auto late = answers.follow(3, [&](unsigned s) { got.push_back(s); });
  REQUIRE(late.status);
  CHECK(*late.status == 201);
  CHECK(got.size() == 1);
}
