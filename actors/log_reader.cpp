#include "actors/log_reader.hpp"
#include "core/lifeline.hpp"
#include "core/thread_name.hpp"

namespace eventsd::actors {

namespace {

template <class T>
void answer(storage::result<T>&& r, const core::reply_to<T>& reply) {
  if (!r.ok())
    return reply(core::make_error(r.error()));
  reply(std::move(r.value()));
}

} // namespace

log_reader_actor::behavior_type log_reader(log_reader_actor::pointer self,
                                           const storage::event_log* log) {
  core::name_this_thread("log-reader");
  core::end_on_exception(self);
  return {
    [=](history_atom, const std::string& id, uint64_t from, uint64_t through,
        todo::state& before, const core::reply_to<todo_history_chunk>& reply) {
      std::optional<todo::state> st;
      if (from > 1)
        st = std::move(before);
      answer(todo_history_page(*log, id, from, std::move(st), history_page_size, through),
             reply);
    },
    [=](state_at_atom, const std::string& id, const std::string& event_id,
        const core::reply_to<todo::state>& reply) {
      answer(todo_state_at(*log, id, event_id), reply);
    },
    [=](version_atom, const std::string& id, const core::reply_to<uint64_t>& reply) {
      answer(todo_version(*log, id), reply);
    },
    [=](stream_atom, const std::string& stream, uint64_t from, uint64_t limit,
        const core::reply_to<recorded_events>& reply) {
      answer(log->read_stream(stream, from, limit, storage::stream_caching::fill), reply);
    },
    [=](all_atom, uint64_t from, uint64_t limit, const core::reply_to<recorded_events>& reply) {
      answer(log->read_all(from, limit), reply);
    },
    [=](streams_atom, uint64_t before, uint64_t limit,
        const core::reply_to<stream_summaries>& reply) {
      answer(log->list_streams(before, limit), reply);
    },
  };
}

} // namespace eventsd::actors
