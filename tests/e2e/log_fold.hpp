// The fold of `$all` into todo states and the whole read model as listed by
// GET /todo: what the e2e tests compare to prove the read model is exactly the
// fold of the log. Header-only, for the test files that need it.
#pragma once

#include <cstdint>
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

} // namespace eventsd::e2e
