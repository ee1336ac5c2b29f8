#include "core/uuid.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>

#include "core/clock.hpp"

namespace eventsd::core {

std::string make_uuid() {
  thread_local std::mt19937_64 rng{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64{seq};
  }()};
  auto ms = static_cast<uint64_t>(unix_ms());
  // RFC 9562 §6.2 method 1: rand_a is a counter within the millisecond, so ids
  // made one after another in this process sort in that order (an index keyed
  // by them is appended to, not inserted into). 4096 ids in one millisecond
  // borrow the next one.
  static std::atomic<uint64_t> last{0}; // ms << 12 | counter
  uint64_t stamp = ms << 12;
  uint64_t prev = last.load(std::memory_order_relaxed);
  uint64_t next;
  do
    next = std::max(prev + 1, stamp);
  while (!last.compare_exchange_weak(prev, next, std::memory_order_relaxed));
  uint64_t hi = ((next >> 12) << 16) | 0x7000 | (next & 0x0FFF); // time, version 7, counter
  uint64_t lo = (rng() & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL; // RFC variant, rand_b
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(36, '-');
  size_t pos = 0;
  auto put = [&](uint64_t v) {
    for (int i = 15; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23)
        ++pos;
      out[pos++] = digits[(v >> (i * 4)) & 0xF];
    }
  };
  put(hi);
  put(lo);
  return out;
}

std::optional<std::string> normalize_uuid(std::string_view text) {
  if (text.size() != 36)
    return std::nullopt;
  std::string out(text);
  for (size_t i = 0; i < out.size(); ++i) {
    char& c = out[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-')
        return std::nullopt;
    } else if (c >= 'A' && c <= 'F') {
      c = static_cast<char>(c - 'A' + 'a');
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return std::nullopt;
    }
  }
  return out;
}

} // namespace eventsd::core
