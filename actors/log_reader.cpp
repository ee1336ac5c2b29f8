#include "actors/log_reader.hpp"

namespace eventsd::actors {

namespace {

template <class T>
caf::result<T> answer(storage::result<T>&& r) {
  if (!r.ok())
    return core::make_error(r.error());
  return std::move(r.value());
}

} // namespace

log_reader_actor::behavior_type log_reader(log_reader_actor::pointer self,
                                           const storage::event_log* log) {
  return {
    [=](history_atom, const std::string& id) -> caf::result<todo_history_items> {
      return answer(todo_history(*log, id));
    },
    [=](state_at_atom, const std::string& id,
        const std::string& event_id) -> caf::result<todo::state> {
      return answer(todo_state_at(*log, id, event_id));
    },
    [=](stream_atom, const std::string& stream, uint64_t from,
        uint64_t limit) -> caf::result<recorded_events> {
      return answer(log->read_stream(stream, from, limit));
    },
    [=](all_atom, uint64_t from, uint64_t limit) -> caf::result<recorded_events> {
      return answer(log->read_all(from, limit));
    },
    [=](streams_atom, uint64_t before, uint64_t limit) -> caf::result<stream_summaries> {
      return answer(log->list_streams(before, limit));
    },
  };
}

} // namespace eventsd::actors
