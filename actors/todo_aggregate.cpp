#include "actors/todo_aggregate.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <span>

#include "core/failpoint.hpp"

namespace eventsd::actors {

namespace {

std::string stream_of(const std::string& id) {
  return std::string{todo_aggregate::stream_prefix} + id;
}

storage::storage_error undecodable(const storage::recorded_event& e) {
  return {storage::storage_errc::corrupted, "undecodable event " + e.id + " in " + e.stream};
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1; // uppercase too: one key must stand for exactly one id string
}

} // namespace

size_t todo_aggregate::key_hash::operator()(const key_type& k) const noexcept {
  uint64_t hi = 0, lo = 0;
  std::memcpy(&hi, k.data(), 8);
  std::memcpy(&lo, k.data() + 8, 8);
  return static_cast<size_t>((lo ^ (hi * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL);
}

std::optional<todo_aggregate::key_type> todo_aggregate::key_of(std::string_view id) {
  if (id.size() != 36)
    return std::nullopt;
  key_type k{};
  size_t nibble = 0;
  for (size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (id[i] != '-')
        return std::nullopt;
      continue;
    }
    auto v = hex_digit(id[i]);
    if (v < 0)
      return std::nullopt;
    k[nibble / 2] |= static_cast<unsigned char>(nibble % 2 == 0 ? v << 4 : v);
    ++nibble;
  }
  return k;
}

namespace {

/// `events` of todo `id` (consecutive, from `before`'s version + 1), each
/// with the state after it.
storage::result<todo_history_chunk> fold_history(const std::string& id,
                                                 std::vector<storage::recorded_event> events,
                                                 std::optional<todo::state> before) {
  todo_history_chunk chunk;
  chunk.items.reserve(events.size());
  auto st = before ? std::move(*before) : todo_aggregate::initial(id);
  for (auto& e : events) {
    auto ev = todo_aggregate::decode(e.type, e.data);
    if (!ev)
      return undecodable(e);
    st = todo_aggregate::evolve(std::move(st), *ev);
    chunk.items.push_back(todo_history_item{std::move(e), st});
  }
  if (!chunk.items.empty())
    chunk.through = chunk.items.back().event.version;
  return chunk;
}

/// `st` after `events` (consecutive, the first right after `st`).
storage::result<todo::state> fold_state(todo::state st,
                                        std::span<const storage::recorded_event> events) {
  for (const auto& e : events) {
    auto ev = todo_aggregate::decode(e.type, e.data);
    if (!ev)
      return undecodable(e);
    st = todo_aggregate::evolve(std::move(st), *ev);
  }
  return st;
}

} // namespace

storage::result<todo_history_chunk> todo_history_page(const storage::event_log& log,
                                                      const std::string& id, uint64_t from,
                                                      std::optional<todo::state> before,
                                                      size_t limit, uint64_t through) {
  if (core::failpoint_armed("log-reader.history-page-fails"))
    return storage::storage_error{storage::storage_errc::io_error, "failpoint"};
  if (through != 0)
    limit = from > through ? 0 : std::min<uint64_t>(limit, through - from + 1);
  auto stream = stream_of(id);
  auto events = log.read_stream(stream, from, limit, storage::stream_caching::fill);
  if (!events.ok())
    return events.error();
  auto chunk = fold_history(id, std::move(*events), std::move(before));
  if (!chunk.ok())
    return chunk;
  uint64_t last = chunk->items.empty() ? from - 1 : chunk->items.back().event.version;
  if (through == 0) {
    through = last;
    // A full page: the stream's version now is where the pages stop.
    if (limit != 0 && chunk->items.size() == limit) {
      auto head = log.stream_version(stream);
      if (!head.ok())
        return head.error();
      through = std::max(*head, last);
    }
  }
  chunk->through = through;
  chunk->more = last < through;
  return chunk;
}

storage::result<uint64_t> todo_version(const storage::event_log& log, const std::string& id) {
  return log.stream_version(stream_of(id));
}

std::optional<storage::result<todo_history_chunk>>
cached_todo_history(const storage::event_log& log, const std::string& id) {
  auto all = log.cached_stream(stream_of(id));
  if (!all)
    return std::nullopt;
  return fold_history(id, *all, std::nullopt);
}

storage::result<std::vector<todo_history_item>> todo_history(const storage::event_log& log,
                                                             const std::string& id) {
  constexpr size_t page = 1000;
  std::vector<todo_history_item> items;
  std::optional<todo::state> st;
  uint64_t through = 0;
  for (;;) {
    auto chunk = todo_history_page(log, id, items.size() + 1, st, page, through);
    if (!chunk.ok())
      return chunk.error();
    if (!chunk->items.empty())
      st = chunk->items.back().state;
    through = chunk->through;
    std::move(chunk->items.begin(), chunk->items.end(), std::back_inserter(items));
    if (!chunk->more)
      return items;
  }
}

std::optional<storage::result<todo::state>>
cached_todo_state_at(const storage::event_log& log, const std::string& id,
                     const std::string& event_id) {
  auto all = log.cached_stream(stream_of(id));
  if (!all)
    return std::nullopt;
  auto target = std::find_if(all->begin(), all->end(),
                             [&](const auto& e) { return e.id == event_id; });
  if (target == all->end())
    return std::nullopt; // another todo's event, or none: the index says which
  return fold_state(todo_aggregate::initial(id), {all->begin(), target + 1});
}

storage::result<todo::state> todo_state_at(const storage::event_log& log, const std::string& id,
                                           const std::string& event_id) {
  auto stream = stream_of(id);
  auto target = log.find_event(event_id);
  if (!target.ok()) {
    // An unknown todo is reported as such, whatever the event id.
    if (auto v = log.stream_version(stream); !v.ok())
      return v.error();
    return target.error();
  }
  if (target->stream != stream) {
    if (auto v = log.stream_version(stream); !v.ok())
      return v.error();
    return storage::storage_error{storage::storage_errc::event_not_found,
                                  "event " + event_id + " is not in " + stream};
  }
  // Fold from the newest snapshot at or before the target when there is one.
  return recover<todo_aggregate>(log, id, target->version);
}

} // namespace eventsd::actors
