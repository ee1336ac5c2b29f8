// A mixed write load over HTTP, the fold of `$all` into todo states and the
// whole read model as listed by GET /todo: what the e2e tests compare to prove the read model is exactly the
// fold of the log. Header-only, for the test files that need it.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <map>
#include <string>
#include <vector>

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
