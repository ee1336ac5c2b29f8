#include "actors/todo_aggregate.hpp"

namespace eventsd::actors {

namespace {

std::string stream_of(const std::string& id) {
  return std::string{todo_aggregate::stream_prefix} + id;
}

storage::storage_error undecodable(const storage::recorded_event& e) {
  return {storage::storage_errc::corrupted, "undecodable event " + e.id + " in " + e.stream};
}

} // namespace

storage::result<std::vector<todo_history_item>> todo_history(const storage::event_log& log,
                                                             const std::string& id) {
  constexpr size_t page = 1000;
  std::vector<todo_history_item> items;
  auto st = todo_aggregate::initial(id);
  uint64_t from = 1;
  for (;;) {
    auto events = log.read_stream(stream_of(id), from, page);
    if (!events.ok())
      return events.error();
    for (auto& e : *events) {
      auto ev = todo_aggregate::decode(e.type, e.data);
      if (!ev)
        return undecodable(e);
      st = todo_aggregate::evolve(std::move(st), *ev);
      items.push_back(todo_history_item{std::move(e), st});
    }
    if (events->size() < page)
      return items;
    from += page;
  }
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
  auto st = todo_aggregate::initial(id);
  uint64_t from = 1;
  if (auto snap = log.load_snapshot(stream); snap.ok() && snap->version <= target->version) {
    if (auto decoded = todo_aggregate::decode_state(snap->state)) {
      st = std::move(*decoded);
      from = snap->version + 1;
    }
  }
  while (from <= target->version) {
    auto events = log.read_stream(stream, from, std::min<uint64_t>(1000, target->version - from + 1));
    if (!events.ok())
      return events.error();
    if (events->empty())
      break;
    for (auto& e : *events) {
      auto ev = todo_aggregate::decode(e.type, e.data);
      if (!ev)
        return undecodable(e);
      st = todo_aggregate::evolve(std::move(st), *ev);
    }
    from += events->size();
  }
  return st;
}

} // namespace eventsd::actors
