// A mixed write load over HTTP, the fold of `$all` into todo states and the
// whole read model as listed by GET /todo: what the e2e tests compare to prove the read model is exactly the
// fold of the log, and the Catch2 check that does. Header-only, for the test files that need it.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "e2e/harness.hpp"

namespace eventsd::e2e {

/// The state of each todo folded from `$all`; `error` names the first event it
/// could not fold.
inline std::map<std::string, json> fold(const std::vector<json>& events, std::string& error) {
  std::map<std::string, json> todos;
  for (auto& e : events) {
    auto stream = e.at("stream").get<std::string>();
    if (stream.rfind("todo-", 0) != 0) {
      error = "not a todo stream: " + e.dump();
      continue;
    }
    auto id = stream.substr(5);
    auto& t = todos[id];
    auto type = e.at("type").get<std::string>();
    auto& data = e.at("data");
    if (type == "created") {
      t = {{"id", id}, {"description", data.at("description")}, {"status", "Created"}};
    } else if (type == "description-changed") {
      t["description"] = data.at("description");
    } else if (type == "status-changed-to-in-progress") {
      t["status"] = "InProgress";
    } else if (type == "status-changed-to-done") {
      t["status"] = "Done";
    } else if (type == "undo-to-some-history-state") {
      t["description"] = data.at("description");
      t["status"] = data.at("status");
    } else {
      error = "unexpected event type: " + e.dump();
    }
    t["version"] = e.at("version");
  }
  return todos;
}

/// Every todo of GET /todo once the read model has applied `position` (empty
/// and `error` set when a page does not answer 200).
inline std::map<std::string, json> list_read_model(http_client& c, uint64_t position, std::string& error) {
  std::map<std::string, json> out;
  std::string after;
  for (;;) {
    auto target = "/todo?limit=1000&waitMs=30000&minPosition=" + std::to_string(position)
                  + (after.empty() ? "" : "&after=" + after);
    auto r = c.get(target);
    if (r.status != 200) {
      error = "GET " + target + " answered " + std::to_string(r.status) + ": " + r.body.substr(0, 300);
      return {};
    }
    auto j = r.json_body();
    for (auto& i : j.at("items")) {
      auto id = i.at("id").get<std::string>();
      if (out.count(id) != 0)
        error = "todo " + id + " listed twice";
      out[id] = i;
    }
    if (j.at("next").is_null())
      return out;
    after = j.at("next").get<std::string>();
  }
}

/// The fold of `events`; REQUIREs that every event folds.
inline std::map<std::string, json> fold(const std::vector<json>& events) {
  std::string error;
  auto todos = fold(events, error);
  INFO("fold: " << error);
  REQUIRE(error.empty());
  return todos;
}

/// The read model once it has applied `position`; REQUIREs that every page
/// answers 200 and lists each todo once.
inline std::map<std::string, json> list_read_model(http_client& c, uint64_t position) {
  std::string error;
  auto todos = list_read_model(c, position, error);
  INFO("read model: " << error);
  REQUIRE(error.empty());
  return todos;
}

/// Differences between the read model and the expected states (at most 5 described).
inline std::vector<std::string> differences(const std::map<std::string, json>& actual,
                                            const std::map<std::string, json>& expected,
                                            size_t& count) {
  std::vector<std::string> out;
  count = 0;
  auto note = [&](std::string s) {
    if (++count <= 5)
      out.push_back(std::move(s));
  };
  for (auto& [id, t] : expected) {
    auto i = actual.find(id);
    if (i == actual.end())
      note("missing from the read model: " + t.dump());
    else if (i->second != t)
      note("read model " + i->second.dump() + " but the log folds to " + t.dump());
  }
  for (auto& [id, t] : actual)
    if (expected.count(id) == 0)
      note("in the read model but not in the log: " + t.dump());
  return out;
}

/// Checks that the read model equals the fold of the whole log, at the log's
/// head ($all being 1..head without gaps); returns the head.
inline uint64_t check_read_model_is_fold_of_log(http_client& c) {
  auto events = read_all(c);
  auto expected = fold(events);
  for (size_t i = 0; i < events.size(); ++i)
    REQUIRE(events[i].at("position") == i + 1);
  auto actual = list_read_model(c, events.size());
  size_t count = 0;
  auto diffs = differences(actual, expected, count);
  for (auto& d : diffs)
    UNSCOPED_INFO(d);
  CHECK(count == 0);
  CHECK(actual.size() == expected.size());
  return events.size();
}

/// Writes about `events` events from `threads` clients: each todo is created,
/// renamed, put in progress and done; every tenth is then undone to its first
/// event. Returns how many answers were not 2xx, with up to 5 samples.
inline size_t write_events(uint16_t port, size_t events, int threads,
                           std::vector<std::string>& samples) {
  std::atomic<size_t> budget{0};
  std::atomic<size_t> failed{0};
  std::mutex mtx;
  auto worker = [&](int t) {
    try {
      http_client c{port};
      for (size_t k = 0;; ++k) {
        auto take = [&] { return budget.fetch_add(1) < events; };
        auto ok = [&](const response& r) {
          if (r.status == 200 || r.status == 201)
            return true;
          ++failed;
          std::lock_guard lock{mtx};
          if (samples.size() < 5)
            samples.push_back(std::to_string(r.status) + " " + r.body.substr(0, 200));
          return false;
        };
        if (!take())
          return;
        auto name = "bulk " + std::to_string(t) + "/" + std::to_string(k);
        auto created = c.post_json("/todo", {{"description", name}});
        if (!ok(created))
          continue;
        auto id = ack_of(created).id;
        if (!take() || !ok(c.put_json("/todo/change-description",
                                      {{"id", id}, {"description", name + " renamed"}})))
          continue;
        if (!take() || !ok(c.put("/todo/" + id + "/put-in-progress")))
          continue;
        if (!take() || !ok(c.put("/todo/" + id + "/done")))
          continue;
        if (k % 10 == 0) {
          auto h = c.get("/todo/" + id + "/history");
          if (!take() || !ok(h))
            continue;
          auto first = h.json_body().at("items").at(0).at("id").get<std::string>();
          ok(c.put("/todo/" + id + "/undo-to/" + first));
        }
      }
    } catch (const std::exception& e) {
      ++failed;
      std::lock_guard lock{mtx};
      samples.push_back(std::string{"client error: "} + e.what());
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back(worker, t);
  for (auto& th : ts)
    th.join();
  return failed;
}

} // namespace eventsd::e2e
