// Tests of the group-commit log writer on a real RocksDB and a real actor system.
#include "actors/log_writer.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include "core/metrics.hpp"
#include "runtime_fixture.hpp"

using namespace eventsd;
using namespace eventsd::test;
using storage::append_request;
using storage::append_result;

namespace {

/// One answer of the writer: where the append landed, or why it failed.
struct append_answer {
  std::optional<append_result> value;
  caf::error error;
};

storage::proposed_event proposed(const std::string& id, const std::string& type = "created") {
  return storage::proposed_event{id, type, R"({"description":"from the writer test"})",
                                 1'700'000'000'000};
}

/// A request of `n` events to `stream`, event ids derived from `tag`.
append_request request(const std::string& stream, uint64_t expected, size_t n = 1,
                       const std::string& tag = "") {
  append_request req;
  req.stream = stream;
  req.expected_version = expected;
  for (size_t i = 0; i < n; ++i)
    req.events.push_back(proposed(stream + tag + "-event-" + std::to_string(i)));
  return req;
}

/// Sends every request from one scoped actor without waiting in between, then
/// collects the answers in request order.
std::vector<append_answer> burst(caf::actor_system& sys, const actors::log_writer_actor& writer,
                                 std::vector<append_request> requests) {
  caf::scoped_actor self{sys};
  using handle = decltype(self->request(writer, reply_timeout, append_atom_v,
                                        std::move(requests.front())));
  std::vector<handle> handles;
  for (auto& req : requests)
    handles.push_back(self->request(writer, reply_timeout, append_atom_v, std::move(req)));
  std::vector<append_answer> answers(handles.size());
  for (size_t i = 0; i < handles.size(); ++i)
    handles[i].receive([&](append_result& r) { answers[i].value = std::move(r); },
                       [&](caf::error& e) { answers[i].error = std::move(e); });
  return answers;
}

append_answer append_one(caf::actor_system& sys, const actors::log_writer_actor& writer,
                         append_request req) {
  std::vector<append_request> one;
  one.push_back(std::move(req));
  return burst(sys, writer, std::move(one)).front();
}

/// `req` claiming idempotency key `key` with `fingerprint`, for a request
/// that arrived at `at_ms`.
append_request claimed(append_request req, std::string key, std::string fingerprint,
                       int64_t at_ms = now_ms()) {
  req.idempotency = storage::idempotency_claim{std::move(key), std::move(fingerprint), at_ms};
  return req;
}

} // namespace

TEST_CASE("appends from many concurrent senders all succeed with gap-free positions",
          "[log_writer]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};

  constexpr size_t senders = 8;
  constexpr size_t per_sender = 40;
  std::vector<std::vector<append_request>> work(senders);
  size_t total_events = 0;
  for (size_t s = 0; s < senders; ++s) {
    for (size_t i = 0; i < per_sender; ++i) {
      auto n = 1 + (i % 3); // multi-event requests too
      total_events += n;
      work[s].push_back(request("w-" + std::to_string(s) + "-" + std::to_string(i),
                                storage::no_stream, n));
    }
  }
  std::vector<std::vector<append_answer>> answers(senders);
  std::vector<std::thread> threads;
  for (size_t s = 0; s < senders; ++s)
    threads.emplace_back([&, s] { answers[s] = burst(rt.sys(), rt.writer(), work[s]); });
  for (auto& t : threads)
    t.join();

  std::vector<uint64_t> positions;
  for (size_t s = 0; s < senders; ++s) {
    REQUIRE(answers[s].size() == per_sender);
    for (size_t i = 0; i < per_sender; ++i) {
      auto& a = answers[s][i];
      INFO("sender " << s << " request " << i << ": " << rt.sys().render(a.error));
      REQUIRE(a.value);
      auto n = 1 + (i % 3);
      CHECK(a.value->stream == "w-" + std::to_string(s) + "-" + std::to_string(i));
      CHECK(a.value->version == n);
      CHECK_FALSE(a.value->replayed);
      CHECK(a.value->last_position - a.value->first_position + 1 == n);
      for (auto p = a.value->first_position; p <= a.value->last_position; ++p)
        positions.push_back(p);
    }
  }
  std::sort(positions.begin(), positions.end());
  REQUIRE(positions.size() == total_events);
  for (size_t i = 0; i < positions.size(); ++i)
    REQUIRE(positions[i] == i + 1); // 1..N, no gap, no duplicate
  CHECK(log->head() == total_events);

  // The log agrees: $all is 1..N and each event sits in the stream it was sent to.
  auto all = log->read_all(1, 10'000);
  REQUIRE(all.ok());
  REQUIRE(all->size() == total_events);
  for (size_t i = 0; i < all->size(); ++i) {
    CHECK((*all)[i].position == i + 1);
    CHECK((*all)[i].id.rfind((*all)[i].stream + "-event-", 0) == 0);
  }
}

TEST_CASE("a burst larger than max_batch is committed in several batches, gap-free",
          "[log_writer]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::writer_options wopts;
  wopts.max_batch = 4;
  runtime rt{log.get(), {}, wopts};
  auto batches_before = core::metrics::instance().fsync_batches.value();

  std::vector<append_request> reqs;
  for (size_t i = 0; i < 50; ++i)
    reqs.push_back(request("m-" + std::to_string(i), storage::no_stream));
  auto answers = burst(rt.sys(), rt.writer(), reqs);

  std::set<uint64_t> positions;
  for (auto& a : answers) {
    REQUIRE(a.value);
    positions.insert(a.value->first_position);
  }
  REQUIRE(positions.size() == 50);
  CHECK(*positions.begin() == 1);
  CHECK(*positions.rbegin() == 50);
  CHECK(log->head() == 50);
  CHECK(core::metrics::instance().fsync_batches.value() - batches_before >= 50 / 4);
}

TEST_CASE("a version conflict in one request does not fail the others of the same burst",
          "[log_writer]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  actors::writer_options wopts;
  wopts.max_wait = std::chrono::milliseconds{50}; // one batch takes the whole burst
  runtime rt{log.get(), {}, wopts};

  std::vector<append_request> reqs;
  for (size_t i = 0; i < 20; ++i)
    reqs.push_back(request("b-" + std::to_string(i), i == 7 ? 3 : storage::no_stream));
  // Same stream twice in a burst: the second sees the first's version...
  reqs.push_back(request("shared", storage::no_stream, 1, "a"));
  reqs.push_back(request("shared", 1, 1, "b"));
  // ...and a stale expectation on it conflicts alone.
  reqs.push_back(request("shared", storage::no_stream, 1, "c"));
  reqs.push_back(request("tail", storage::no_stream));

  auto answers = burst(rt.sys(), rt.writer(), reqs);
  REQUIRE(answers.size() == 24);

  std::vector<uint64_t> positions;
  for (size_t i = 0; i < answers.size(); ++i) {
    INFO("request " << i);
    if (i == 7 || i == 22) {
      CHECK_FALSE(answers[i].value);
      CHECK(is_error(answers[i].error, storage::storage_errc::wrong_expected_version));
      continue;
    }
    REQUIRE(answers[i].value);
    positions.push_back(answers[i].value->first_position);
  }
  CHECK(answers[21].value->version == 2);
  // A refused request consumes no position: the others are exactly 1..22.
  std::sort(positions.begin(), positions.end());
  for (size_t i = 0; i < positions.size(); ++i)
    CHECK(positions[i] == i + 1);
  CHECK(log->head() == 22);

  // Nothing of the refused requests was appended.
  auto refused = log->stream_version("b-7");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == storage::storage_errc::stream_not_found);
  auto shared = log->read_stream("shared", 1, 10);
  REQUIRE(shared.ok());
  REQUIRE(shared->size() == 2);
  CHECK((*shared)[0].id == "shareda-event-0");
  CHECK((*shared)[1].id == "sharedb-event-0");
}

TEST_CASE("a registered listener receives the committed head after each batch",
          "[log_writer]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};

  caf::scoped_actor listener{rt.sys()};
  caf::anon_send(rt.writer(), listen_atom_v,
                 caf::actor_cast<actors::position_listener_actor>(listener.ptr()));

  auto expect_head = [&](uint64_t expected) {
    bool got = false;
    // Skip heads of earlier batches, if several were committed.
    for (int i = 0; i < 100 && !got; ++i) {
      listener->receive(
        [&](core::committed c) {
          CHECK(c.position <= expected);
          got = c.position == expected;
        },
        caf::after(std::chrono::seconds{5}) >> [&] { FAIL("no committed notification"); });
    }
    CHECK(got);
  };

  auto first = append_one(rt.sys(), rt.writer(), request("listened", storage::no_stream, 3));
  REQUIRE(first.value);
  expect_head(first.value->last_position);
  CHECK(first.value->last_position == 3);

  auto second = append_one(rt.sys(), rt.writer(), request("listened", 3, 2, "more"));
  REQUIRE(second.value);
  expect_head(5);
  CHECK(log->head() == 5);
}

TEST_CASE("an idempotency claim replays the first append through the writer",
          "[log_writer][idempotency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};

  auto first = append_one(rt.sys(), rt.writer(),
                          claimed(request("todo-a", storage::no_stream), "key-1", "fp-1"));
  REQUIRE(first.value);
  CHECK_FALSE(first.value->replayed);

  SECTION("a retry with the same key and fingerprint appends nothing and answers the same") {
    auto& m = core::metrics::instance();
    auto batches = m.fsync_batches.value();
    auto appended = m.events_appended.value();
    // Even with an expectation the stream no longer meets.
    auto again = append_one(
      rt.sys(), rt.writer(),
      claimed(request("todo-b", storage::no_stream, 1, "retry"), "key-1", "fp-1"));
    REQUIRE(again.value);
    CHECK(again.value->replayed);
    CHECK(again.value->stream == "todo-a");
    CHECK(again.value->version == first.value->version);
    CHECK(again.value->first_position == first.value->first_position);
    CHECK(again.value->last_position == first.value->last_position);
    CHECK(log->head() == 1);
    CHECK_FALSE(log->stream_version("todo-b").ok());
    // Nothing was written or synced, and the metrics say so.
    CHECK(m.fsync_batches.value() == batches);
    CHECK(m.events_appended.value() == appended);
  }

  SECTION("the same key with a different fingerprint is an idempotency conflict") {
    auto other = append_one(rt.sys(), rt.writer(),
                            claimed(request("todo-c", storage::no_stream), "key-1", "fp-2"));
    CHECK_FALSE(other.value);
    CHECK(is_error(other.error, storage::storage_errc::idempotency_conflict));
    CHECK(log->head() == 1);
  }

  SECTION("a key reused inside one burst replays the append earlier in that burst") {
    std::vector<append_request> reqs;
    reqs.push_back(claimed(request("todo-d", storage::no_stream), "key-2", "fp-d"));
    reqs.push_back(claimed(request("todo-d", storage::no_stream, 1, "dup"), "key-2", "fp-d"));
    reqs.push_back(claimed(request("todo-e", storage::no_stream), "key-2", "fp-other"));
    auto answers = burst(rt.sys(), rt.writer(), reqs);
    REQUIRE(answers[0].value);
    REQUIRE(answers[1].value);
    CHECK_FALSE(answers[0].value->replayed);
    CHECK(answers[1].value->replayed);
    CHECK(answers[1].value->first_position == answers[0].value->first_position);
    CHECK_FALSE(answers[2].value);
    CHECK(is_error(answers[2].error, storage::storage_errc::idempotency_conflict));
    CHECK(log->head() == 2);
  }
}

TEST_CASE("the key purger deletes expired idempotency keys on its own thread, every interval",
          "[log_writer][idempotency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto first = append_one(rt.sys(), rt.writer(),
                          claimed(request("todo-a", storage::no_stream), "key-old", "fp",
                                  now_ms() - 60'000));
  REQUIRE(first.value);
  actors::writer_options wopts;
  wopts.idempotency_retention = std::chrono::milliseconds{30'000};
  wopts.purge_interval = std::chrono::milliseconds{20};
  wopts.purge_grace = std::chrono::milliseconds{0};
  auto& m = core::metrics::instance();
  const auto purged_before = m.idempotency_keys_purged.value();
  auto purger = rt.sys().spawn<caf::detached>(actors::key_purger, log.get(), wopts);
  // A claim of the same key dated a minute back is a replay while the key is
  // stored; once it is purged, the claim appends and stores the key again,
  // as old as before, for a later purge to delete.
  int polls = 0;
  auto purged = [&] {
    return eventually([&] {
      auto r = append_one(rt.sys(), rt.writer(),
                          claimed(request("todo-poll-" + std::to_string(++polls), storage::no_stream),
                                  "key-old", "fp", now_ms() - 60'000));
      REQUIRE(r.value);
      return !r.value->replayed;
    });
  };
  CHECK(purged());
  CHECK(purged()); // stored after the first purge: a later one deleted it
  caf::anon_send_exit(purger, caf::exit_reason::user_shutdown);
  CHECK(log->head() == 3);
  // Both deletions are counted, and each run's duration observed.
  CHECK(m.idempotency_keys_purged.value() >= purged_before + 2);
  auto text = m.render();
  CHECK(text.find("eventsd_idempotency_keys_purged_total ") != std::string::npos);
  const std::string runs = "eventsd_idempotency_purge_seconds_count ";
  auto count_at = text.find(runs);
  REQUIRE(count_at != std::string::npos);
  CHECK(std::stoull(text.substr(count_at + runs.size())) >= 2);
}

TEST_CASE("the key purger keeps an expired key for its grace period: a retry that arrived "
          "within the retention window and waited in a queue still replays",
          "[log_writer][idempotency]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  // Created 40 s ago, kept for 30 s: expired 10 s ago.
  const auto created = now_ms() - 40'000;
  auto first = append_one(rt.sys(), rt.writer(),
                          claimed(request("todo-a", storage::no_stream), "key-late", "fp", created));
  REQUIRE(first.value);
  actors::writer_options wopts;
  wopts.idempotency_retention = std::chrono::milliseconds{30'000};
  wopts.purge_interval = std::chrono::milliseconds{20};
  wopts.purge_grace = std::chrono::milliseconds{60'000};
  {
    auto purger = rt.sys().spawn<caf::detached>(actors::key_purger, log.get(), wopts);
    std::this_thread::sleep_for(std::chrono::milliseconds{300}); // many purges
    caf::anon_send_exit(purger, caf::exit_reason::user_shutdown);
  }
  // A retry that arrived 29 s after the first request (in time) and reaches
  // the writer only now.
  auto retry = append_one(rt.sys(), rt.writer(),
                          claimed(request("todo-b", storage::no_stream), "key-late", "fp",
                                  created + 29'000));
  REQUIRE(retry.value);
  CHECK(retry.value->replayed);
  CHECK(retry.value->first_position == first.value->first_position);
  // Past the grace (10 s expired, 5 s of grace) the key goes: the same retry
  // then creates anew.
  wopts.purge_grace = std::chrono::milliseconds{5'000};
  auto purger = rt.sys().spawn<caf::detached>(actors::key_purger, log.get(), wopts);
  CHECK(eventually([&] {
    auto r = append_one(rt.sys(), rt.writer(),
                        claimed(request("todo-c", storage::no_stream), "key-late", "fp",
                                created + 29'000));
    REQUIRE(r.value);
    return !r.value->replayed;
  }));
  caf::anon_send_exit(purger, caf::exit_reason::user_shutdown);
}

TEST_CASE("a storage error reaches the sender as a storage-category CAF error",
          "[log_writer]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  REQUIRE(append_one(rt.sys(), rt.writer(), request("s", storage::no_stream)).value);
  auto conflict = append_one(rt.sys(), rt.writer(), request("s", storage::no_stream, 1, "x"));
  REQUIRE_FALSE(conflict.value);
  CHECK(is_error(conflict.error, storage::storage_errc::wrong_expected_version));
  CHECK(rt.sys().render(conflict.error).find("storage: wrong_expected_version")
        != std::string::npos);
}

TEST_CASE("an append whose deadline passed before the writer took it is refused unwritten, "
          "the others of its batch are written",
          "[log_writer][deadline]") {
  temp_dir dir;
  auto log = open_log(dir.db());
  runtime rt{log.get()};
  auto now = std::chrono::steady_clock::now();

  std::vector<append_request> reqs;
  reqs.push_back(request("no-deadline", storage::no_stream));
  reqs.push_back(request("passed", storage::no_stream));
  reqs.back().deadline = now - std::chrono::milliseconds{1};
  reqs.push_back(request("in-time", storage::no_stream));
  reqs.back().deadline = now + std::chrono::minutes{10};

  auto answers = burst(rt.sys(), rt.writer(), reqs);
  REQUIRE(answers.size() == 3);
  REQUIRE(answers[0].value);
  CHECK_FALSE(answers[1].value);
  CHECK(is_error(answers[1].error, core::runtime_errc::deadline_passed));
  REQUIRE(answers[2].value);
  // The refusal took no position.
  CHECK(answers[0].value->first_position + answers[2].value->first_position == 3);
  CHECK(log->head() == 2);
  auto refused = log->stream_version("passed");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == storage::storage_errc::stream_not_found);
}
