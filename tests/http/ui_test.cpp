// API.md §3 GET /ui: the event browser end to end in headless Chromium. Starts
// the real eventsd (own database) and runs tests/http/ui_browser.js (playwright-core)
// against it; see that script for what it checks. Screenshots of the views go to
// $EVENTSD_SCREENSHOTS_DIR when it is set.
#include "http_support.hpp"

#include <catch2/catch.hpp>

#include <iostream>

using namespace eventsd::e2e;
using namespace eventsd::http_tests;
using namespace std::chrono_literals;

TEST_CASE("/ui in headless Chromium: live tail, streams, events, state, undo", "[http][ui]") {
  server s;
  http_client c{s.port()};
  REQUIRE(c.get("/ui").status == 200);
  auto url = "http://127.0.0.1:" + std::to_string(s.port());
  auto result = run_command({require_env("EVENTSD_NODE"), require_env("EVENTSD_UI_SCRIPT"), url},
                            {.timeout = 90s,
                             .env = {"EVENTSD_CHROMIUM=" + require_env("EVENTSD_CHROMIUM")}});
  std::cout << result.output << std::flush;
  INFO("ui_browser.js (exit " << result.exit_code() << "):\n" << result.output);
  CHECK(result.exit_code() == 0);
}
