// Tests of the generic aggregate runtime (aggregate actors, registry shards,
// passivation, recovery, snapshots) with the Todo aggregate, on a real
// RocksDB and a real actor system.
#include "actors/aggregate.hpp"

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "actors/todo_aggregate.hpp"
#include "core/uuid.hpp"
#include "runtime_fixture.hpp"

using namespace eventsd;
using namespace eventsd::test;
using actors::todo_aggregate;
using actors::write_conditions;

namespace {

std::string stream_of(const std::string& id) {
  return "todo-" + id;
}

/// The state of todo `id` by folding its whole stream, without snapshots.
todo::state fold(const storage::event_log& log, const std::string& id) {
  auto st = todo_aggregate::initial(id);
  auto events = log.read_stream(stream_of(id), 1, 100'000);
  if (!events.ok())
    return st;
  for (auto& e : *events) {
    auto ev = todo::decode_event(e.type, e.data);
    REQUIRE(ev);
    st = todo::evolve(std::move(st), *ev);
  }
  return st;
}

std::vector<storage::recorded_event> events_of(const storage::event_log& log,
                                               const std::string& id) {
  auto events = log.read_stream(stream_of(id), 1, 100'000);
  if (!events.ok())
    return {};
  return std::move(events).value();
}

write_conditions if_match(uint64_t version) {
  write_conditions c;
  c.if_match = std::vector<uint64_t>{version};
  return c;
}

/// The event type a command appends when accepted.
std::string type_appended_by(const todo::command& c) {
  switch (c.index()) {
    case 0:
      return "created";
    case 1:
      return "description-changed";
    case 2:
      return "status-changed-to-in-progress";
    case 3:
      return "status-changed-to-done";
    default:
      return "undo-to-some-history-state";
  }
}

/// An accepted command of a cycle that changes description and status.
todo::command nth_command(size_t n) {
  switch (n % 3) {
    case 0:
      return todo::put_in_progress{};
    case 1:
      return todo::change_description{"description #" + std::to_string(n)};
    default:
      return todo::mark_done{};
  }
}

} // namespace

TEST_CASE("concurrent commands on one aggregate get contiguous versions and one event each",
          "[aggregate][concurrency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  auto created = rt.execute(id, todo::create{"contended"});
  REQUIRE_OK(created);
  REQUIRE(created->version == 1);

  constexpr size_t threads = 4;
  constexpr size_t per_thread = 50;
  std::vector<std::vector<todo::command>> sent(threads);
  std::vector<std::vector<outcome>> answers(threads);
  std::vector<std::thread> workers;
  for (size_t t = 0; t < threads; ++t) {
    std::vector<runtime::addressed_command> burst;
    for (size_t i = 0; i < per_thread; ++i) {
      sent[t].push_back(nth_command(t * per_thread + i));
      burst.push_back({id, sent[t].back()});
    }
    workers.emplace_back(
      [&, t, burst = std::move(burst)]() mutable { answers[t] = rt.execute_burst(std::move(burst)); });
  }
  for (auto& w : workers)
    w.join();

  // Every command is accepted; versions are exactly 2..201, each once.
  std::map<uint64_t, std::pair<uint64_t, std::string>> by_version; // -> position, type
  for (size_t t = 0; t < threads; ++t) {
    uint64_t previous = 1;
    for (size_t i = 0; i < per_thread; ++i) {
      auto& o = answers[t][i];
      REQUIRE_OK(o);
      CHECK(o->id == id);
      // One sender's commands are decided in the order it sent them.
      CHECK(o->version > previous);
      previous = o->version;
      auto inserted = by_version.emplace(o->version,
                                         std::make_pair(o->position, type_appended_by(sent[t][i])));
      CHECK(inserted.second);
    }
  }
  const uint64_t n = 1 + threads * per_thread;
  REQUIRE(by_version.size() == n - 1);
  CHECK(by_version.begin()->first == 2);
  CHECK(by_version.rbegin()->first == n);

  // The stream holds exactly those events, at the answered positions.
  auto events = events_of(*log, id);
  REQUIRE(events.size() == n);
  CHECK(events[0].type == "created");
  for (uint64_t v = 2; v <= n; ++v) {
    auto& e = events[v - 1];
    CHECK(e.version == v);
    CHECK(e.position == by_version[v].first);
    CHECK(e.type == by_version[v].second);
  }
  auto recovered = actors::recover<todo_aggregate>(*log, id);
  REQUIRE(recovered.ok());
  CHECK(recovered->version == n);
  CHECK(*recovered == fold(*log, id));
}

TEST_CASE("commands on many aggregates at once get independent results in arrival order",
          "[aggregate][concurrency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.shards = 4;
  runtime rt{log.get(), ropts};

  constexpr size_t todos = 40;
  std::vector<std::string> ids;
  for (size_t i = 0; i < todos; ++i)
    ids.push_back(core::make_uuid());
  // Interleaved: every todo's create, then every todo's second command, ...
  std::vector<runtime::addressed_command> burst;
  for (size_t step = 0; step < 4; ++step) {
    for (size_t i = 0; i < todos; ++i) {
      todo::command c;
      switch (step) {
        case 0:
          c = todo::create{"todo number " + std::to_string(i)};
          break;
        case 1:
          c = todo::put_in_progress{};
          break;
        case 2:
          // Todo 0 gets an invalid description: refused, and only for it.
          c = todo::change_description{i == 0 ? std::string{"x"} : "renamed " + std::to_string(i)};
          break;
        default:
          c = todo::mark_done{};
      }
      burst.push_back({ids[i], c});
    }
  }
  auto answers = rt.execute_burst(burst);
  REQUIRE(answers.size() == 4 * todos);

  std::set<uint64_t> positions;
  for (size_t i = 0; i < todos; ++i) {
    INFO("todo " << i);
    std::vector<outcome*> mine;
    for (size_t step = 0; step < 4; ++step)
      mine.push_back(&answers[step * todos + i]);
    if (i == 0) {
      REQUIRE_OK(*mine[0]);
      REQUIRE_OK(*mine[1]);
      REQUIRE_FALSE(*mine[2]);
      CHECK(is_error(mine[2]->error, todo::todo_errc::invalid_description));
      REQUIRE_OK(*mine[3]);
      CHECK((*mine[3])->version == 3);
      CHECK(fold(*log, ids[i]) == todo::state{ids[i], "todo number 0", todo::status::done, 3});
      continue;
    }
    for (size_t step = 0; step < 4; ++step) {
      REQUIRE_OK(*mine[step]);
      CHECK((*mine[step])->id == ids[i]);
      CHECK((*mine[step])->version == step + 1);
      CHECK(positions.insert((*mine[step])->position).second);
    }
    auto events = events_of(*log, ids[i]);
    REQUIRE(events.size() == 4);
    CHECK(events[0].type == "created");
    CHECK(events[1].type == "status-changed-to-in-progress");
    CHECK(events[2].type == "description-changed");
    CHECK(events[3].type == "status-changed-to-done");
    CHECK(fold(*log, ids[i])
          == todo::state{ids[i], "renamed " + std::to_string(i), todo::status::done, 4});
  }
  CHECK(log->head() == 4 * todos - 1);
}

TEST_CASE("If-Match with a stale version fails with precondition_failed and appends nothing",
          "[aggregate][if-match]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"guarded"}));
  REQUIRE_OK(rt.execute(id, todo::put_in_progress{}));
  auto head = log->head();

  for (uint64_t stale : {uint64_t{0}, uint64_t{1}, uint64_t{3}, uint64_t{99}}) {
    INFO("If-Match " << stale);
    auto o = rt.execute(id, todo::mark_done{}, if_match(stale));
    REQUIRE_FALSE(o);
    CHECK(is_error(o.error, core::runtime_errc::precondition_failed));
    CHECK(o.rendered.find("runtime: precondition_failed") != std::string::npos);
  }
  CHECK(log->head() == head);
  CHECK(log->stream_version(stream_of(id)).value() == 2);

  auto ok = rt.execute(id, todo::mark_done{}, if_match(2));
  REQUIRE_OK(ok);
  CHECK(ok->version == 3);
}

TEST_CASE("If-None-Match naming the current version, or any version, fails with "
          "precondition_failed and appends nothing",
          "[aggregate][if-match]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"guarded"}));
  write_conditions named;
  named.if_none_match = std::vector<uint64_t>{3, 1};
  write_conditions any;
  any.if_none_match = std::vector<uint64_t>{};
  any.if_none_match_any = true;
  for (auto& cond : {named, any}) {
    auto o = rt.execute(id, todo::mark_done{}, cond);
    REQUIRE_FALSE(o);
    CHECK(is_error(o.error, core::runtime_errc::precondition_failed));
  }
  CHECK(log->head() == 1);
  write_conditions other;
  other.if_none_match = std::vector<uint64_t>{2};
  auto ok = rt.execute(id, todo::mark_done{}, other);
  REQUIRE_OK(ok);
  CHECK(ok->version == 2);
}

TEST_CASE("If-Match on an unknown todo is not_found", "[aggregate][if-match]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  std::vector<todo::command> commands{todo::put_in_progress{}, todo::mark_done{},
                                      todo::change_description{"valid text"}};
  for (auto& c : commands) {
    auto o = rt.execute(id, c, if_match(1));
    REQUIRE_FALSE(o);
    CHECK(is_error(o.error, todo::todo_errc::not_found));
  }
  CHECK(log->head() == 0);
  CHECK_FALSE(log->stream_version(stream_of(id)).ok());
}

TEST_CASE("refused commands reach the sender as todo errors and append nothing",
          "[aggregate][errors]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();

  auto missing = rt.execute(id, todo::put_in_progress{});
  REQUIRE_FALSE(missing);
  CHECK(is_error(missing.error, todo::todo_errc::not_found));
  CHECK(missing.rendered.find("todo: not_found") != std::string::npos);

  auto invalid = rt.execute(id, todo::create{"x"});
  REQUIRE_FALSE(invalid);
  CHECK(is_error(invalid.error, todo::todo_errc::invalid_description));
  // The context names the field.
  CHECK(invalid.rendered.find("description") != std::string::npos);
  CHECK(log->head() == 0);

  REQUIRE_OK(rt.execute(id, todo::create{"exists now"}));
  auto twice = rt.execute(id, todo::create{"again"});
  REQUIRE_FALSE(twice);
  CHECK(is_error(twice.error, todo::todo_errc::already_exists));
  CHECK(log->head() == 1);
}

TEST_CASE("an idempotent create retried on another id answers the first outcome",
          "[aggregate][idempotency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto claim = [](std::string fingerprint) {
    write_conditions c;
    c.idempotency = storage::idempotency_claim{"client-key-1", std::move(fingerprint),
                                               now_ms()};
    return c;
  };
  auto first_id = core::make_uuid();
  auto first = rt.execute(first_id, todo::create{"only once"}, claim("fp"));
  REQUIRE_OK(first);
  CHECK_FALSE(first->replayed);

  // The gateway makes a fresh id for every POST: the retry names another one.
  auto retry_id = core::make_uuid();
  auto retry = rt.execute(retry_id, todo::create{"only once"}, claim("fp"));
  REQUIRE_OK(retry);
  CHECK(retry->replayed);
  CHECK(retry->id == first_id);
  CHECK(retry->version == first->version);
  CHECK(retry->position == first->position);
  CHECK(log->head() == 1);
  CHECK_FALSE(log->stream_version(stream_of(retry_id)).ok());

  auto conflict = rt.execute(core::make_uuid(), todo::create{"different body"}, claim("fp2"));
  REQUIRE_FALSE(conflict);
  CHECK(is_error(conflict.error, storage::storage_errc::idempotency_conflict));
  CHECK(log->head() == 1);

  // The replays' and the conflict's fresh aggregates name no todo: they do
  // not stay alive (pushing real todos out of max_live) until the idle timeout.
  for (int i = 0; i < 20; ++i) {
    REQUIRE_OK(rt.execute(core::make_uuid(), todo::create{"only once"}, claim("fp")));
    REQUIRE_FALSE(rt.execute(core::make_uuid(), todo::create{"different"}, claim("fp3")));
  }
  CHECK(eventually([&] { return rt.live() <= 1; }));
}

TEST_CASE("idle aggregates are passivated and a later command reactivates them intact",
          "[aggregate][passivation]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.idle_timeout = std::chrono::milliseconds{1000}; // long enough not to end between two checks
  ropts.shards = 4;
  runtime rt{log.get(), ropts};
  auto actors_before = live_actors();

  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(core::make_uuid());
    REQUIRE_OK(rt.execute(ids.back(), todo::create{"idle " + std::to_string(i)}));
    REQUIRE_OK(rt.execute(ids.back(), todo::put_in_progress{}));
  }
  CHECK(rt.live() >= 1); // the last one was used a moment ago

  CHECK(eventually([&] { return rt.live() == 0; }));
  CHECK(eventually([&] { return live_actors() == actors_before; }));

  // Reactivation recovers version, description and status from the log.
  auto o = rt.execute(ids[2], todo::mark_done{}, if_match(2));
  REQUIRE_OK(o);
  CHECK(o->version == 3);
  CHECK(rt.live() == 1);
  auto again = rt.execute(ids[2], todo::create{"again"});
  CHECK(is_error(again.error, todo::todo_errc::already_exists));
  CHECK(fold(*log, ids[2]) == todo::state{ids[2], "idle 2", todo::status::done, 3});

  // And it is passivated again once idle.
  CHECK(eventually([&] { return rt.live() == 0; }));
}

TEST_CASE("a command whose deadline passed before the aggregate decided it is refused as "
          "deadline_passed and appends nothing",
          "[aggregate][deadline]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  actors::write_conditions passed;
  passed.deadline = std::chrono::steady_clock::now() - std::chrono::milliseconds{1};

  // A create: refused, and the fresh aggregate is not kept alive.
  auto refused = rt.execute(id, todo::create{"too late"}, passed);
  REQUIRE_FALSE(refused);
  CHECK(is_error(refused.error, core::runtime_errc::deadline_passed));
  CHECK(log->head() == 0);
  CHECK(eventually([&] { return rt.live() == 0; }));

  // A command on an existing todo: refused, nothing appended, and the next
  // command (no deadline) carries on from the same version.
  REQUIRE_OK(rt.execute(id, todo::create{"in time"}));
  auto late = rt.execute(id, todo::mark_done{}, passed);
  REQUIRE_FALSE(late);
  CHECK(is_error(late.error, core::runtime_errc::deadline_passed));
  CHECK(log->head() == 1);
  actors::write_conditions ahead;
  ahead.deadline = std::chrono::steady_clock::now() + std::chrono::minutes{10};
  auto ok = rt.execute(id, todo::mark_done{}, ahead);
  REQUIRE_OK(ok);
  CHECK(ok->version == 2);
}

TEST_CASE("a refused command on a missing todo leaves no live aggregate behind",
          "[aggregate][passivation]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  for (int i = 0; i < 10; ++i)
    REQUIRE_FALSE(rt.execute(core::make_uuid(), todo::mark_done{}));
  CHECK(eventually([&] { return rt.live() == 0; }));
}

TEST_CASE("max_live caps the live aggregates and evicted ones keep their state",
          "[aggregate][passivation]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.max_live = 10;
  ropts.shards = 1;
  runtime rt{log.get(), ropts};
  auto actors_before = live_actors();

  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    ids.push_back(core::make_uuid());
    REQUIRE_OK(rt.execute(ids.back(), todo::create{"capped " + std::to_string(i)}));
    REQUIRE(rt.live() <= 10);
  }
  CHECK(rt.live() == 10);
  // The evicted actors really stop.
  CHECK(eventually([&] { return live_actors() - actors_before <= 10; }));

  for (int i = 0; i < 50; ++i) {
    INFO("todo " << i);
    auto o = rt.execute(ids[i], todo::put_in_progress{}, if_match(1));
    REQUIRE_OK(o);
    CHECK(o->version == 2);
    REQUIRE(rt.live() <= 10);
  }
  for (int i = 0; i < 50; ++i)
    CHECK(fold(*log, ids[i])
          == todo::state{ids[i], "capped " + std::to_string(i), todo::status::in_progress, 2});
  CHECK(eventually([&] { return live_actors() - actors_before <= 10; }));
}

TEST_CASE("max_live caps the live aggregates of all shards together",
          "[aggregate][passivation]") {
  // runtime_options::max_live is "most live aggregate actors in all shards
  // together"; each shard gets ceil(max_live / shards), so 4 shards of 3 can
  // hold 12 when max_live is 10.
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.max_live = 10;
  ropts.shards = 4;
  runtime rt{log.get(), ropts};
  uint64_t most = 0;
  for (int i = 0; i < 100; ++i) {
    REQUIRE_OK(rt.execute(core::make_uuid(), todo::create{"spread " + std::to_string(i)}));
    most = std::max(most, rt.live());
  }
  CHECK(most <= 10);
}

TEST_CASE("commands to an aggregate evicted while its last command is in flight still succeed",
          "[aggregate][passivation]") {
  // Eviction (max_live) stops an actor that may still have a command in flight;
  // the next command for the same id spawns a fresh actor that must not decide
  // on a state recovered before that in-flight event became durable.
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.max_live = 1;
  ropts.shards = 1;
  runtime rt{log.get(), ropts};
  auto a = core::make_uuid();
  auto b = core::make_uuid();
  REQUIRE_OK(rt.execute(a, todo::create{"todo a"}));
  REQUIRE_OK(rt.execute(b, todo::create{"todo b"}));

  constexpr size_t rounds = 100;
  std::vector<runtime::addressed_command> burst;
  for (size_t i = 0; i < rounds; ++i)
    burst.push_back({i % 2 == 0 ? a : b, nth_command(i / 2)});
  auto answers = rt.execute_burst(burst);

  size_t failed = 0;
  std::string first_error;
  for (auto& o : answers) {
    if (!o) {
      if (failed++ == 0)
        first_error = o.rendered;
    }
  }
  INFO(failed << " of " << rounds << " commands failed, first: " << first_error);
  CHECK(failed == 0);
  // The successor spawned for commands queued behind a stopping actor is
  // capped too.
  CHECK(rt.live() <= 1);
  CHECK(log->stream_version(stream_of(a)).value() == 1 + rounds / 2);
  CHECK(log->stream_version(stream_of(b)).value() == 1 + rounds / 2);
}

namespace {

/// An append of a `status-changed-to-done` event to todo `id` at
/// `expected_version`: another writer's, which the live aggregate has not seen.
storage::append_request foreign_done(const std::string& id, uint64_t expected_version) {
  storage::append_request foreign;
  foreign.stream = stream_of(id);
  foreign.expected_version = expected_version;
  todo::event done = todo::status_changed_to_done{};
  foreign.events.push_back(storage::proposed_event{core::make_uuid(),
                                                   std::string{todo::type_name(done)},
                                                   todo::encode_data(done), now_ms()});
  return foreign;
}

/// A todo created through `rt`, then given a second event by another writer,
/// which its live aggregate has not seen.
std::string raced_todo(runtime& rt) {
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"raced"}));
  caf::scoped_actor self{rt.sys()};
  self->request(rt.writer(), reply_timeout, append_atom_v, foreign_done(id, 1))
    .receive([](storage::append_result& r) { REQUIRE(r.version == 2); },
             [&](caf::error& e) { FAIL(rt.sys().render(e)); });
  return id;
}

} // namespace

TEST_CASE("an aggregate whose append hit a version conflict decides the command again on the "
          "log's state, and the next command too",
          "[aggregate]") {
  // A conflict means the actor decided on a stale state (another writer
  // appended to its stream). The command, and every later one, must be
  // decided on the stream as it is in the log, not refused again and again
  // until the actor happens to be passivated.
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = raced_todo(rt);

  // Decided on version 1, its append conflicts with the log's version 2; it
  // is decided again on version 2 and appended as version 3.
  auto first = rt.execute(id, todo::put_in_progress{});
  INFO("first: " << first.rendered);
  REQUIRE(first);
  CHECK(first->version == 3u);
  auto second = rt.execute(id, todo::change_description{"raced, renamed"});
  INFO("second: " << second.rendered);
  REQUIRE(second);
  CHECK(second->version == 4u);
  auto folded = fold(*log, id);
  CHECK(folded.description == "raced, renamed");
  CHECK(folded.status == todo::status::in_progress);
  CHECK(log->stream_version(stream_of(id)).value() == 4u);
}

TEST_CASE("a conditional command whose append hit a version conflict is judged again on the "
          "log's version: 412 and nothing appended",
          "[aggregate]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = raced_todo(rt);

  // The actor still holds version 1, so If-Match: "1" passes its check; the
  // append conflicts, and against the log's version 2 the condition fails.
  auto o = rt.execute(id, todo::put_in_progress{}, if_match(1));
  INFO("answer: " << o.rendered);
  REQUIRE_FALSE(o);
  CHECK(is_error(o.error, core::runtime_errc::precondition_failed));
  CHECK(log->stream_version(stream_of(id)).value() == 2u);
  CHECK(fold(*log, id).status == todo::status::done);
}

namespace {

using append_promise = caf::typed_response_promise<storage::append_result>;
/// What a front does with an append: `self` the front, `writer` the real one.
using append_handler = std::function<void(actors::log_writer_actor::pointer self,
                                          const actors::log_writer_actor& writer,
                                          storage::append_request req, append_promise rp)>;

/// Stands between the registry and the log writer: passes everything on, and
/// each append to `on_append`.
actors::log_writer_actor writer_front_of(caf::actor_system& sys, actors::log_writer_actor writer,
                                         append_handler on_append) {
  return sys.spawn([writer, on_append](actors::log_writer_actor::pointer self)
                     -> actors::log_writer_actor::behavior_type {
    return {
      [=](append_atom, storage::append_request& req) -> caf::result<storage::append_result> {
        auto rp = self->make_response_promise<storage::append_result>();
        on_append(self, writer, std::move(req), rp);
        return rp;
      },
      [=](listen_atom a, actors::position_listener_actor& l) { self->send(writer, a, l); },
      [=](flush_atom a) { self->send(writer, a); },
      [=](tick_atom a) { self->send(writer, a); },
      [=](answered_atom a, std::string& key, uint64_t status, core::reply_to<uint64_t>& done) {
        self->send(writer, a, std::move(key), status, std::move(done));
      },
    };
  });
}

/// Appends `req` through `writer` and answers `rp` with what it answers.
void pass_on(actors::log_writer_actor::pointer self, const actors::log_writer_actor& writer,
             storage::append_request req, append_promise rp) {
  self->request(writer, caf::infinite, append_atom_v, std::move(req))
    .then([rp](storage::append_result& r) mutable { rp.deliver(std::move(r)); },
          [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
}

/// Passes everything on, but while `landed_but_failed` is set answers the
/// next append, once it is in the log, as a write that failed and may or may
/// not have been appended (what the store answers when a failed write's batch
/// landed after all).
actors::log_writer_actor landing_failures(caf::actor_system& sys, actors::log_writer_actor writer,
                                          std::shared_ptr<std::atomic<bool>> landed_but_failed) {
  return writer_front_of(sys, writer, [landed_but_failed](auto self, const auto& writer,
                                                          storage::append_request req,
                                                          append_promise rp) {
    self->request(writer, caf::infinite, append_atom_v, std::move(req))
      .then(
        [rp, landed_but_failed](storage::append_result& r) mutable {
          if (landed_but_failed->exchange(false))
            rp.deliver(caf::make_error(
              storage::storage_errc::not_writable,
              "the disk did not confirm it, so it may or may not have been appended"));
          else
            rp.deliver(std::move(r));
        },
        [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
  });
}

} // namespace

TEST_CASE("an aggregate whose write failed but may have landed decides the next command on the "
          "log as it is",
          "[aggregate]") {
  // A failed write whose batch reached the log after all: the live actor's
  // state is a version behind the log. A client that reads the stream and
  // sends the next command with If-Match of the version it read must not be
  // refused from that stale state.
  temp_dir dir;
  auto log = open_log(dir.db());
  auto landed_but_failed = std::make_shared<std::atomic<bool>>(false);
  runtime rt{log.get(), {}, {},
             [&](caf::actor_system& sys, actors::log_writer_actor writer) {
               return landing_failures(sys, writer, landed_but_failed);
             }};
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"landed anyway"}));

  landed_but_failed->store(true);
  auto failed = rt.execute(id, todo::put_in_progress{});
  INFO("failed: " << failed.rendered);
  REQUIRE_FALSE(failed);
  CHECK(is_error(failed.error, storage::storage_errc::not_writable));
  REQUIRE(log->stream_version(stream_of(id)).value() == 2u); // it landed

  write_conditions cond;
  cond.if_match = std::vector<uint64_t>{2};
  auto next = rt.execute(id, todo::change_description{"read the stream, then renamed"}, cond);
  INFO("next: " << next.rendered);
  REQUIRE(next);
  CHECK(next->version == 3u);
  auto folded = fold(*log, id);
  CHECK(folded.description == "read the stream, then renamed");
  CHECK(folded.status == todo::status::in_progress);
}

namespace {

/// Passes everything on, but while `races` is above zero precedes each append
/// by another writer's append to the same stream at the same expected
/// version, so that it conflicts; `seen` counts the appends it passed on.
actors::log_writer_actor racing_writer(caf::actor_system& sys, actors::log_writer_actor writer,
                                       std::shared_ptr<std::atomic<int>> races,
                                       std::shared_ptr<std::atomic<int>> seen) {
  return writer_front_of(sys, writer, [races, seen](auto self, const auto& writer,
                                                    storage::append_request req,
                                                    append_promise rp) {
    ++*seen;
    if (races->fetch_sub(1) <= 0)
      return pass_on(self, writer, std::move(req), rp);
    auto id = req.stream.substr(std::string_view{"todo-"}.size());
    self->request(writer, caf::infinite, append_atom_v, foreign_done(id, req.expected_version))
      .then([=](storage::append_result&) mutable { pass_on(self, writer, req, rp); },
            [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
  });
}

} // namespace

TEST_CASE("a command whose append conflicts again after it was decided once more is answered "
          "with the conflict, with no third attempt, and the next command succeeds",
          "[aggregate]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  auto races = std::make_shared<std::atomic<int>>(0);
  auto seen = std::make_shared<std::atomic<int>>(0);
  runtime rt{log.get(), {}, {},
             [&](caf::actor_system& sys, actors::log_writer_actor writer) {
               return racing_writer(sys, writer, races, seen);
             }};
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"raced twice"}));
  REQUIRE(seen->load() == 1);

  races->store(2);
  auto o = rt.execute(id, todo::put_in_progress{});
  INFO("answer: " << o.rendered);
  REQUIRE_FALSE(o);
  CHECK(is_error(o.error, storage::storage_errc::wrong_expected_version));
  CHECK(seen->load() == 3); // the command's append and its one retry
  CHECK(log->stream_version(stream_of(id)).value() == 3u); // the two foreign events only

  auto next = rt.execute(id, todo::put_in_progress{});
  INFO("next: " << next.rendered);
  REQUIRE(next);
  CHECK(next->version == 4u);
  CHECK(seen->load() == 4);
  CHECK(fold(*log, id).status == todo::status::in_progress);
}

TEST_CASE("aggregates recover their state after the actor system is rebuilt on the same store",
          "[aggregate][recovery]") {
  temp_dir dir;
  auto id = core::make_uuid();
  uint64_t head = 0;
  {
    auto log = open_log(dir.db());
    runtime rt{log.get()};
    REQUIRE_OK(rt.execute(id, todo::create{"survives restarts"}));
    REQUIRE_OK(rt.execute(id, todo::change_description{"survives restarts, renamed"}));
    REQUIRE_OK(rt.execute(id, todo::put_in_progress{}));
    REQUIRE_OK(rt.execute(id, todo::mark_done{}));
    head = log->head();
  } // actor system, writer and log all gone

  auto log = open_log(dir.db());
  CHECK(log->head() == head);
  runtime rt{log.get()};
  auto created = rt.execute(id, todo::create{"again"});
  REQUIRE_FALSE(created);
  CHECK(is_error(created.error, todo::todo_errc::already_exists));

  auto o = rt.execute(id, todo::put_in_progress{}, if_match(4));
  REQUIRE_OK(o);
  CHECK(o->version == 5);
  CHECK(o->position == head + 1); // positions continue, never reused
  CHECK(fold(*log, id)
        == todo::state{id, "survives restarts, renamed", todo::status::in_progress, 5});
}

TEST_CASE("recovery from a snapshot plus the tail equals a full replay",
          "[aggregate][snapshot]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.snapshot_every = 10;
  runtime rt{log.get(), ropts};
  auto id = core::make_uuid();

  REQUIRE_OK(rt.execute(id, todo::create{"snapshotted"}));
  for (size_t i = 0; i < 34; ++i) {
    // Events 31..35 change only the status, so the snapshot's description
    // is still current at the end.
    auto c = i + 2 <= 30 ? nth_command(i) : (i % 2 ? todo::command{todo::mark_done{}}
                                                   : todo::command{todo::put_in_progress{}});
    auto o = rt.execute(id, c);
    REQUIRE_OK(o);
    REQUIRE(o->version == i + 2);
  }
  auto events = events_of(*log, id);
  REQUIRE(events.size() == 35);

  // A loader actor stores snapshots after the append's answer: wait for the last one.
  REQUIRE(eventually([&] {
    auto s = log->load_snapshot(stream_of(id));
    return s.ok() && s->version == 30;
  }));
  auto snap = log->load_snapshot(stream_of(id));
  REQUIRE(snap.ok());
  auto snap_state = todo::decode_state(snap->state);
  REQUIRE(snap_state);
  auto at_30 = todo_aggregate::initial(id);
  for (size_t i = 0; i < 30; ++i)
    at_30 = todo::evolve(at_30, *todo::decode_event(events[i].type, events[i].data));
  CHECK(*snap_state == at_30);

  auto full = fold(*log, id);
  CHECK(full.version == 35);
  auto recovered = actors::recover<todo_aggregate>(*log, id);
  REQUIRE(recovered.ok());
  CHECK(*recovered == full);

  SECTION("recover starts from the snapshot, not from event 1") {
    auto doctored = *snap_state;
    doctored.description = "only in the snapshot";
    REQUIRE(log->save_snapshot(stream_of(id),
                               storage::snapshot_record{30, todo::encode_state(doctored)})
              .ok());
    auto from_snapshot = actors::recover<todo_aggregate>(*log, id);
    REQUIRE(from_snapshot.ok());
    CHECK(from_snapshot->description == "only in the snapshot");
    CHECK(from_snapshot->version == 35);
    CHECK(from_snapshot->status == full.status);
  }

  SECTION("the state at a past version starts from the newest snapshot at or before it, "
          "every one being kept") {
    for (uint64_t v : {10, 20, 30})
      CHECK(log->load_snapshot(stream_of(id), v).value().version == v);
    auto fold_to = [&](size_t version) {
      auto st = todo_aggregate::initial(id);
      for (size_t i = 0; i < version; ++i)
        st = todo::evolve(st, *todo::decode_event(events[i].type, events[i].data));
      return st;
    };
    // The snapshot at 20, doctored: the state at 20 is it, not a fold from
    // event 1 or from the snapshot at 10.
    auto at_20 = todo::decode_state(log->load_snapshot(stream_of(id), 20).value().state);
    REQUIRE(at_20);
    at_20->description = "only in the snapshot at 20";
    REQUIRE(log->save_snapshot(stream_of(id),
                               storage::snapshot_record{20, todo::encode_state(*at_20)})
              .ok());
    CHECK(actors::recover<todo_aggregate>(*log, id, 20).value() == *at_20);
    CHECK(actors::recover<todo_aggregate>(*log, id, 19).value() == fold_to(19));
    // Event 21 changes the description: from there on the fold is the log's again.
    CHECK(actors::recover<todo_aggregate>(*log, id, 25).value() == fold_to(25));
  }

  SECTION("an undecodable snapshot falls back to a full replay") {
    REQUIRE(log->save_snapshot(stream_of(id), storage::snapshot_record{30, "not a state"}).ok());
    auto replayed = actors::recover<todo_aggregate>(*log, id);
    REQUIRE(replayed.ok());
    CHECK(*replayed == full);
  }
}

TEST_CASE("recover of an unknown aggregate is its initial state", "[aggregate][recovery]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  auto id = core::make_uuid();
  auto st = actors::recover<todo_aggregate>(*log, id);
  REQUIRE(st.ok());
  CHECK(*st == todo_aggregate::initial(id));
  CHECK_FALSE(st->exists());
}

TEST_CASE("commands carrying a write_reply (the gateway's path) are answered like requests, in "
          "order, also while their aggregate is being evicted",
          "[aggregate][reply]") {
  // max_live = 1 with two todos: nearly every command finds its aggregate
  // stopping and waits in the shard for the successor.
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.max_live = 1;
  ropts.shards = 1;
  runtime rt{log.get(), ropts};
  auto a = core::make_uuid();
  auto b = core::make_uuid();

  std::mutex mtx;
  std::map<std::string, std::vector<caf::expected<actors::write_outcome>>> answers;
  auto reply_for = [&](const std::string& id) {
    return actors::write_reply{[&, id](caf::expected<actors::write_outcome> r) {
      std::lock_guard<std::mutex> guard{mtx};
      answers[id].push_back(std::move(r));
    }};
  };
  auto send = [&](const std::string& id, todo::command cmd) {
    caf::anon_send(rt.registry().shard_for(id), execute_atom_v, id, std::move(cmd),
                   write_conditions{}, reply_for(id));
  };
  send(a, todo::create{"todo a"});
  send(b, todo::create{"todo b"});
  constexpr size_t rounds = 100;
  for (size_t i = 0; i < rounds; ++i)
    send(i % 2 == 0 ? a : b, nth_command(i / 2));
  auto answered = [&] {
    std::lock_guard<std::mutex> guard{mtx};
    return answers[a].size() + answers[b].size();
  };
  REQUIRE(eventually([&] { return answered() == rounds + 2; }, std::chrono::seconds{20}));

  std::lock_guard<std::mutex> guard{mtx};
  for (auto& id : {a, b}) {
    auto& got = answers[id];
    REQUIRE(got.size() == 1 + rounds / 2);
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("todo " << id << ", answer " << i << ": "
                   << (got[i] ? "ok" : rt.sys().render(got[i].error())));
      REQUIRE(got[i]);
      CHECK(got[i]->id == id);
      CHECK(got[i]->version == i + 1); // answered in sending order
    }
    CHECK(log->stream_version(stream_of(id)).value() == 1 + rounds / 2);
    CHECK(fold(*log, id).version == 1 + rounds / 2);
  }
}

TEST_CASE("a refused command carrying a write_reply gets the refusal and appends nothing",
          "[aggregate][reply]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto id = core::make_uuid();
  REQUIRE_OK(rt.execute(id, todo::create{"once"}));
  std::promise<caf::expected<actors::write_outcome>> got;
  caf::anon_send(rt.registry().shard_for(id), execute_atom_v, id,
                 todo::command{todo::change_description{""}}, write_conditions{},
                 actors::write_reply{[&](caf::expected<actors::write_outcome> r) {
                   got.set_value(std::move(r));
                 }});
  auto f = got.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds{20}) == std::future_status::ready);
  auto r = f.get();
  REQUIRE_FALSE(r);
  CHECK(is_error(r.error(), todo::todo_errc::invalid_description));
  CHECK(log->stream_version(stream_of(id)).value() == 1);
}

TEST_CASE("above max_live the least recently used aggregate is the one passivated",
          "[aggregate][passivation]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::runtime_options ropts;
  ropts.max_live = 3;
  ropts.shards = 1;
  runtime rt{log.get(), ropts};
  auto& activations = core::metrics::instance().aggregate_activations;
  auto a = core::make_uuid(), b = core::make_uuid(), c = core::make_uuid(),
       d = core::make_uuid();
  REQUIRE_OK(rt.execute(a, todo::create{"todo a"}));
  REQUIRE_OK(rt.execute(b, todo::create{"todo b"}));
  REQUIRE_OK(rt.execute(c, todo::create{"todo c"}));
  // Touch a and c: the use order, oldest first, is now b, a, c.
  REQUIRE_OK(rt.execute(a, todo::put_in_progress{}));
  REQUIRE_OK(rt.execute(c, todo::put_in_progress{}));
  REQUIRE_OK(rt.execute(d, todo::create{"todo d"})); // evicts b, the least recently used
  CHECK(rt.live() == 3);

  auto before = activations.value();
  REQUIRE_OK(rt.execute(a, todo::mark_done{})); // still live: no activation
  REQUIRE_OK(rt.execute(c, todo::mark_done{}));
  REQUIRE_OK(rt.execute(d, todo::put_in_progress{}));
  CHECK(activations.value() == before);
  REQUIRE_OK(rt.execute(b, todo::mark_done{})); // was passivated: activated again, state kept
  CHECK(activations.value() == before + 1);
  CHECK(fold(*log, b).status == todo::status::done);
  CHECK(rt.live() == 3);
}

TEST_CASE("a command for an id that is not a canonical UUID is refused as invalid_id, "
          "and spawns nothing",
          "[aggregate][key]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  for (std::string id : {"not-a-uuid", "0192F0C1-4F4E-7A7B-9A51-0D1C2B3A4F5E"}) {
    auto r = rt.execute(id, todo::create{"never"});
    INFO(id << ": " << r.rendered);
    REQUIRE_FALSE(r);
    CHECK(is_error(r.error, core::runtime_errc::invalid_id));
  }
  CHECK(rt.live() == 0);
  CHECK(log->head() == 0);
}
