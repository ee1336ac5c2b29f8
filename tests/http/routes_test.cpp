// The router's free helpers (http/routes.hpp), without a server: which
// addresses count as loopback (the admin routes' default), and where a
// subscription starts.
#include "http/routes.hpp"

#include <string>

#include <catch2/catch.hpp>

using namespace eventsd::http;

TEST_CASE("loopback is 127.0.0.0/8, ::1 in any spelling, IPv4-mapped 127.x and localhost; "
          "nothing else",
          "[http][routes]") {
  for (std::string a : {"localhost", "127.0.0.1", "127.1.2.3", "::1", "0:0:0:0:0:0:0:1",
                        "0000:0000:0000:0000:0000:0000:0000:0001", "::ffff:127.0.0.1",
                        "::FFFF:127.9.9.9", "::1%lo"}) {
    INFO(a);
    CHECK(is_loopback_address(a));
  }
  for (std::string a : {"0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "::2", "::ffff:10.0.0.1",
                        "fe80::1", "127.0.0.1.example.org", "localhost.example.org", "",
                        "127.0.0.256"}) {
    INFO(a);
    CHECK_FALSE(is_loopback_address(a));
  }
}

namespace {

incoming subscribe(std::string from, std::string last_event_id) {
  incoming req;
  req.method = "GET";
  req.path = "/subscribe/$all";
  if (!from.empty())
    req.query["from"] = std::move(from);
  if (!last_event_id.empty())
    req.headers["last-event-id"] = std::move(last_event_id);
  return req;
}

} // namespace

TEST_CASE("a subscription starts at `from` (default 1, 0 read as 1) or one past Last-Event-ID, "
          "which overrides it; a malformed one is a 400 naming it",
          "[http][routes]") {
  uint64_t from = 0;
  CHECK_FALSE(subscription_start(subscribe("", ""), from));
  CHECK(from == 1);
  CHECK_FALSE(subscription_start(subscribe("0", ""), from));
  CHECK(from == 1);
  CHECK_FALSE(subscription_start(subscribe("42", ""), from));
  CHECK(from == 42);
  CHECK_FALSE(subscription_start(subscribe("42", "7"), from));
  CHECK(from == 8);
  for (auto [query, header, field] : {std::tuple{"-1", "", "from"}, std::tuple{"x", "", "from"},
                                      std::tuple{"", "abc", "Last-Event-ID"},
                                      std::tuple{"3", "-3", "Last-Event-ID"}}) {
    INFO("from=" << query << " Last-Event-ID: " << header);
    auto bad = subscription_start(subscribe(query, header), from);
    REQUIRE(bad);
    CHECK(bad->status == 400);
    CHECK(bad->body.find(field) != std::string::npos);
  }
}
