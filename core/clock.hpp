// The wall clock as eventsd stores it: milliseconds since the Unix epoch.
#pragma once

#include <chrono>
#include <cstdint>

namespace eventsd::core {

/// Milliseconds since 1970-01-01T00:00:00Z (the system clock: may step).
inline int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

} // namespace eventsd::core
