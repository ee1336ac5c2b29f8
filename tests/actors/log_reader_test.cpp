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

/// A todo's version as the log reader answers it (`version_atom`).
caf::expected<uint64_t> version_of(const actors::log_reader_actor& reader, const std::string& id) {
  // Shared: a reply after a timed-out wait must not reach a destroyed promise.
  auto answered = std::make_shared<std::promise<caf::expected<uint64_t>>>();
  auto answer = answered->get_future();
  caf::anon_send(reader, version_atom_v, id,
                 core::reply_to<uint64_t>{[answered](caf::expected<uint64_t> r) {
                   answered->set_value(std::move(r));
                 }});
  REQUIRE(answer.wait_for(std::chrono::seconds{10}) == std::future_status::ready);
  return answer.get();
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
  caf::scoped_actor self{rt.sys()};
  auto fail = [&](caf::error& e) { FAIL(rt.sys().render(e)); };

  std::string first_event;
  self->request(reader, reply_timeout, history_atom_v, id)
    .receive(
      [&](actors::todo_history_items& items) {
        REQUIRE(items.size() == 2);
        CHECK(items[1].state == todo::state{id, "read me", todo::status::done, 2});
        first_event = items[0].event.id;
      },
      fail);
  self->request(reader, reply_timeout, state_at_atom_v, id, first_event)
    .receive(
      [&](todo::state& st) {
        CHECK(st == todo::state{id, "read me", todo::status::created, 1});
      },
      fail);
  self->request(reader, reply_timeout, stream_atom_v, "todo-" + id, uint64_t{2}, uint64_t{10})
    .receive(
      [&](actors::recorded_events& events) {
        REQUIRE(events.size() == 1);
        CHECK(events[0].version == 2);
      },
      fail);
  self->request(reader, reply_timeout, all_atom_v, uint64_t{1}, uint64_t{10})
    .receive([&](actors::recorded_events& events) { CHECK(events.size() == 3); }, fail);
  self->request(reader, reply_timeout, streams_atom_v, uint64_t{0}, uint64_t{10})
    .receive(
      [&](actors::stream_summaries& streams) {
        REQUIRE(streams.size() == 2); // the most recently written first
        CHECK(streams[0].stream == "todo-" + id);
        CHECK(streams[0].version == 2);
      },
      fail);
  auto version = version_of(reader, id);
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
  caf::scoped_actor self{rt.sys()};

  caf::error history_error;
  self->request(reader, reply_timeout, history_atom_v, core::make_uuid())
    .receive([&](actors::todo_history_items&) { FAIL("history of an unknown todo"); },
             [&](caf::error& e) { history_error = e; });
  CHECK(is_error(history_error, storage::storage_errc::stream_not_found));

  caf::error stream_error;
  self->request(reader, reply_timeout, stream_atom_v, std::string{"todo-nope"}, uint64_t{1},
                uint64_t{10})
    .receive([&](actors::recorded_events&) { FAIL("an unknown stream"); },
             [&](caf::error& e) { stream_error = e; });
  CHECK(is_error(stream_error, storage::storage_errc::stream_not_found));

  auto version = version_of(reader, core::make_uuid());
  REQUIRE_FALSE(version);
  CHECK(is_error(version.error(), storage::storage_errc::stream_not_found));
  caf::anon_send_exit(reader, caf::exit_reason::user_shutdown);
}
