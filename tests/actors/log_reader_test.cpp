// Tests of the log reader actor: Todo history, state at an event and the raw
// log reads, with storage errors answered as CAF errors.
#include "actors/log_reader.hpp"

#include <future>
#include <string>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "core/uuid.hpp"
#include "runtime_fixture.hpp"

using namespace eventsd;
using namespace eventsd::test;

namespace {

/// The log reader's answer to a read carrying a `core::reply_to<T>` (the
/// gateway's form) after the read's elements `xs`.
template <class T, class... Ts>
caf::expected<T> ask(const actors::log_reader_actor& reader, Ts&&... xs) {
  // Shared: a reply after a timed-out wait must not reach a destroyed promise.
  auto answered = std::make_shared<std::promise<caf::expected<T>>>();
  auto answer = answered->get_future();
  caf::anon_send(reader, std::forward<Ts>(xs)...,
                 core::reply_to<T>{[answered](caf::expected<T> r) {
                   answered->set_value(std::move(r));
                 }});
  REQUIRE(answer.wait_for(std::chrono::seconds{20}) == std::future_status::ready);
  return answer.get();
}

/// The first page of todo `id`'s history as the gateway asks for it.
caf::expected<actors::todo_history_chunk> history_of(const actors::log_reader_actor& reader,
                                                     const std::string& id) {
  return ask<actors::todo_history_chunk>(reader, history_atom_v, id, uint64_t{1}, uint64_t{0},
                                         todo::state{});
}

} // namespace

TEST_CASE("the log reader answers history, state at an event, a todo's version, streams and $all",
          "[log_reader]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  // Another todo first: versions differ from positions.
  REQUIRE(rt.execute(core::make_uuid(), todo::create{"before"}));
  auto id = core::make_uuid();
  REQUIRE(rt.execute(id, todo::create{"read me"}));
  REQUIRE(rt.execute(id, todo::mark_done{}));
  auto reader = rt.sys().spawn<caf::detached>(actors::log_reader, log.get());
  auto render = [&](const caf::error& e) { return rt.sys().render(e); };

  auto history = history_of(reader, id);
  INFO((history ? "" : render(history.error())));
  REQUIRE(history);
  REQUIRE(history->items.size() == 2);
  CHECK_FALSE(history->more);
  CHECK(history->items[1].state == todo::state{id, "read me", todo::status::done, 2});
  auto first_event = history->items[0].event.id;

  auto st = ask<todo::state>(reader, state_at_atom_v, id, first_event);
  INFO((st ? "" : render(st.error())));
  REQUIRE(st);
  CHECK(*st == todo::state{id, "read me", todo::status::created, 1});

  auto stream = ask<actors::recorded_events>(reader, stream_atom_v, "todo-" + id, uint64_t{2},
                                             uint64_t{10});
  INFO((stream ? "" : render(stream.error())));
  REQUIRE(stream);
  REQUIRE(stream->size() == 1);
  CHECK((*stream)[0].version == 2);

  auto all = ask<actors::recorded_events>(reader, all_atom_v, uint64_t{1}, uint64_t{10});
  INFO((all ? "" : render(all.error())));
  REQUIRE(all);
  CHECK(all->size() == 3);

  auto streams = ask<actors::stream_summaries>(reader, streams_atom_v, uint64_t{0}, uint64_t{10});
  INFO((streams ? "" : render(streams.error())));
  REQUIRE(streams);
  REQUIRE(streams->size() == 2); // the most recently written first
  CHECK((*streams)[0].stream == "todo-" + id);
  CHECK((*streams)[0].version == 2);

  auto version = ask<uint64_t>(reader, version_atom_v, id);
  REQUIRE(version);
  CHECK(*version == 2);
  caf::anon_send_exit(reader, caf::exit_reason::user_shutdown);
}

TEST_CASE("the log reader answers storage errors for unknown todos and events",
          "[log_reader]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto reader = rt.sys().spawn<caf::detached>(actors::log_reader, log.get());

  auto history = history_of(reader, core::make_uuid());
  REQUIRE_FALSE(history); // the history of an unknown todo
  CHECK(is_error(history.error(), storage::storage_errc::stream_not_found));

  auto stream = ask<actors::recorded_events>(reader, stream_atom_v, std::string{"todo-nope"},
                                             uint64_t{1}, uint64_t{10});
  REQUIRE_FALSE(stream); // an unknown stream
  CHECK(is_error(stream.error(), storage::storage_errc::stream_not_found));

  auto version = ask<uint64_t>(reader, version_atom_v, core::make_uuid());
  REQUIRE_FALSE(version);
  CHECK(is_error(version.error(), storage::storage_errc::stream_not_found));
  caf::anon_send_exit(reader, caf::exit_reason::user_shutdown);
}
