// Failpoints: named places in the code where a test can make eventsd fail
// as it would on an unexpected error, or be slow, to prove the failure or the
// race is handled. The environment variable EVENTSD_FAILPOINTS
// (comma-separated names, read once) arms them; `failpoint(name)` then throws
// there, `failpoint_pause(name, d)` sleeps. Unset — always, outside tests — a
// failpoint costs one test of an empty list.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace eventsd::core {

/// The names armed by EVENTSD_FAILPOINTS.
inline const std::vector<std::string>& armed_failpoints() {
  static const std::vector<std::string> armed = [] {
    std::vector<std::string> names;
    const char* env = std::getenv("EVENTSD_FAILPOINTS");
    std::string_view rest = env ? env : "";
    while (!rest.empty()) {
      auto comma = rest.find(',');
      if (auto name = rest.substr(0, comma); !name.empty())
        names.emplace_back(name);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    return names;
  }();
  return armed;
}

/// Whether `name` is armed.
inline bool failpoint_armed(std::string_view name) {
  auto& armed = armed_failpoints();
  return std::find(armed.begin(), armed.end(), name) != armed.end();
}

/// Throws std::runtime_error("failpoint <name>") when `name` is armed.
inline void failpoint(std::string_view name) {
  if (failpoint_armed(name))
    throw std::runtime_error("failpoint " + std::string{name});
}

/// Sleeps `pause` when `name` is armed: a stage made slow, so that a test can
/// order what would otherwise race.
template <class Duration>
void failpoint_pause(std::string_view name, Duration pause) {
  if (failpoint_armed(name))
    std::this_thread::sleep_for(pause);
}

} // namespace eventsd::core
